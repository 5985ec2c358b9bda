"""run.py, the README's entry point: a machine that cannot make its tool venv gets one line."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
from tests.conftest import ROOT


@pytest.fixture
def run_py(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_py", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TOOL_VENV", tmp_path / ".venv-tox")
    return module


def test_an_unknown_command_prints_the_usage(run_py, capsys):
    assert run_py.main(["benchmark"]) == 2
    assert "usage: python3 run.py {bench|gpu|lint|test|tests}" in capsys.readouterr().out


def test_a_python_without_ensurepip_is_one_line(run_py, monkeypatch, capsys):
    def no_ensurepip(self, path):
        raise subprocess.CalledProcessError(1, ["python", "-m", "ensurepip"])

    monkeypatch.setattr(run_py.venv.EnvBuilder, "create", no_ensurepip)
    assert run_py.main(["test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"run.py: creating {run_py.TOOL_VENV} failed")
    assert "apt install python3-venv" in err


def test_a_package_index_out_of_reach_is_one_line(run_py, monkeypatch, capsys):
    monkeypatch.setattr(run_py.venv.EnvBuilder, "create", lambda self, path: None)

    def pip_fails(cmd, check):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(run_py.subprocess, "run", pip_fails)
    assert run_py.main(["bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "installing tox into" in err and "package index" in err
