#!/usr/bin/env python3
"""Bootstrap for the README's commands: reuse or create a small venv holding tox, then run tox.

`python3 run.py bench` runs the main job, `python3 run.py test` the suite's own tests; anything
after the environment name goes to pytest. Only the standard library is used here, so this runs on
a fresh machine with nothing but Python >= 3.10.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOOL_VENV = ROOT / ".venv-tox"
ALIASES = {"test": "tests", "tests": "tests", "bench": "bench", "gpu": "gpu", "lint": "lint"}


def _tox() -> Path:
    bindir = TOOL_VENV / ("Scripts" if os.name == "nt" else "bin")
    tox = bindir / ("tox.exe" if os.name == "nt" else "tox")
    if not tox.exists():
        print(f"run.py: creating {TOOL_VENV.name} with tox (first run only)", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOL_VENV)
        python = bindir / ("python.exe" if os.name == "nt" else "python")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tox>=4.20"], check=True)
    return tox


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ALIASES:
        print(f"usage: python3 run.py {{{'|'.join(sorted(set(ALIASES)))}}} [pytest args...]")
        return 2
    if sys.version_info < (3, 10):  # noqa: UP036 - run.py runs under any python3
        print("run.py: Python >= 3.10 is required")
        return 2
    env, rest = ALIASES[argv[0]], argv[1:]
    cmd = [str(_tox()), "-e", env, *(["--", *rest] if rest else [])]
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
