"""glibc malloc settings that keep CPU timings from depending on allocation history.

By default glibc gives large freed blocks (PyTorch's activations) back to the OS, through its
mmap threshold and by trimming the top of the heap, so the next forward page-faults them in
again. How much it gives back depends on what else the process allocated: PyTorch eager fp32,
tf_efficientnet_lite0 bs1, measured 16-22 ms in a fresh process and 9.5-13 ms once another
library's long-lived allocations pinned the heap top (importing onnxruntime or creating an ORT
session is enough), a 2x swing from allocation history alone (docs/results/cpu-2026-11-29.md).
Fixing both thresholds, as jemalloc or tcmalloc (PyTorch's CPU-inference advice) do by design,
puts every case in the same state, and PyTorch in its faster one: speedups against it are the
conservative ones. ONNX Runtime allocates from its own arena and is not affected.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit
TRIM_THRESHOLD = 1 << 30

_state: dict[str, str] = {"malloc": "default"}


def hold_freed_memory() -> str | None:
    """Keep freed blocks up to 32 MiB in the heap and trim it only past 1 GiB free.

    Returns None when applied, else why not (not glibc, mallopt refused). Process-wide and
    one way: glibc has no call to restore its dynamic thresholds.
    """
    if not sys.platform.startswith("linux"):
        return f"glibc malloc settings need Linux, this is {sys.platform}"
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return "this C library has no mallopt() (not glibc)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) != 1:
            return f"mallopt({param}, {value}) was refused"
    _state["malloc"] = (
        f"hold (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 30} GiB)"
    )
    return None


def malloc_state() -> str:
    """What this process's malloc runs with, for machine_info."""
    return _state["malloc"]
