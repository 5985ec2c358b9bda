"""glibc malloc settings for repeatable CPU timings: applied where glibc is, explained elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest

from supercharge import malloc


@pytest.fixture(autouse=True)
def _keep_this_process_state(monkeypatch):
    """The tests below change the recorded setting; a run that times cases beside them (perf/
    and tests/ together) must still report the setting its timings ran with."""
    monkeypatch.setitem(malloc._state, "malloc", malloc._state["malloc"])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt() is glibc's: this C library is not glibc",
)
def test_hold_freed_memory_applies_on_glibc():
    """In a child process: mallopt() changes the whole process, which may be timing cases."""
    code = (
        "from supercharge import malloc; "
        "print(malloc.hold_freed_memory()); print(malloc.malloc_state())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    assert out[0] == "None"
    assert out[1].startswith("hold (mmap threshold 32 MiB, trim 1 GiB")


def test_a_c_library_without_mallopt_is_named(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: SimpleNamespace())
    assert malloc.hold_freed_memory() == "this C library has no mallopt() (not glibc)"


def test_a_refused_setting_is_named(monkeypatch):
    class Refusing:
        argtypes = restype = None

        def __call__(self, param, value):
            return 0

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=Refusing()))
    reason = malloc.hold_freed_memory()
    assert reason == f"mallopt({malloc.M_MMAP_THRESHOLD}, {malloc.MMAP_THRESHOLD}) was refused"


def test_both_thresholds_are_set_with_glibc_parameter_numbers(monkeypatch):
    """What mallopt() is called with (glibc has no getter to read them back): the mmap
    threshold (-3) at 32 MiB and the trim threshold (-1) at 1 GiB, malloc.h's numbers."""
    calls = []

    class Recording:
        argtypes = restype = None

        def __call__(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=Recording()))
    assert malloc.hold_freed_memory() is None
    assert calls == [(-3, 32 << 20), (-1, 1 << 30)]


def test_other_systems_keep_their_malloc(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert malloc.hold_freed_memory() == "glibc malloc settings need Linux, this is darwin"
