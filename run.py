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


class SetupError(Exception):
    """The tool venv could not be made: one line saying what to do, not a traceback."""


def _tox() -> Path:
    bindir = TOOL_VENV / ("Scripts" if os.name == "nt" else "bin")
    tox = bindir / ("tox.exe" if os.name == "nt" else "tox")
    if tox.exists():
        return tox
    print(f"run.py: creating {TOOL_VENV.name} with tox (first run only)", flush=True)
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOL_VENV)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SetupError(
            f"creating {TOOL_VENV} failed ({exc}): this Python lacks a working venv/ensurepip "
            "(Debian/Ubuntu: apt install python3-venv), or the folder is not writable"
        ) from None
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    try:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tox>=4.20"], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SetupError(
            f"installing tox into {TOOL_VENV} failed ({exc}): check that pip can reach the "
            "package index (or its proxy/mirror settings), then run again"
        ) from None
    return tox


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ALIASES:
        print(f"usage: python3 run.py {{{'|'.join(sorted(set(ALIASES)))}}} [pytest args...]")
        return 2
    if sys.version_info < (3, 10):  # noqa: UP036 - run.py runs under any python3
        print("run.py: Python >= 3.10 is required")
        return 2
    env, rest = ALIASES[argv[0]], argv[1:]
    try:
        tox = _tox()
    except SetupError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    return subprocess.call([str(tox), "-e", env, *(["--", *rest] if rest else [])], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
