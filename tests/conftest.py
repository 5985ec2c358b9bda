"""Helpers shared by the suite's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supercharge.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "images"


@pytest.fixture
def run_cli(capsys):
    """Run `supercharge ARGS` in-process; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def coffee() -> Path:
    return FIXTURES / "coffee.png"


PYTHON = sys.executable


ROOT = Path(__file__).resolve().parents[1]


def run_pytest(
    args: tuple[str, ...], artifacts: Path, timeout: int = 900, plugins: Path | None = None
):
    """Run pytest on this repository in a subprocess with its own artifact dir (and `plugins`,
    a folder of modules to load with -p, on its path)."""
    env = {**os.environ, "SUPERCHARGE_ARTIFACT_DIR": str(artifacts)}
    if plugins is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), env.get("PYTHONPATH")]))
    return subprocess.run(
        [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def pytester_run(tmp_path):
    """Run pytest on this repository in a subprocess (own artifact dir); returns the result."""

    def run(*args: str, timeout: int = 900, plugins: Path | None = None):
        return run_pytest(args, tmp_path / "artifacts", timeout, plugins)

    return run


@pytest.fixture(scope="session")
def suite_in_subprocess():
    """run_pytest, for module-scoped fixtures that run the suite once and share the result."""
    return run_pytest
