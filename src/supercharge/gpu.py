"""Why a GPU backend cannot run here, in one line, without importing GPU code at module load.

Each `*_unavailable_reason()` returns None when the piece is usable, else a reason that says what
to install or where to run. `backend_unavailable_reason()` combines them for a backend name from
supercharge.runners.BACKENDS (and a preprocessing name), so a test or benchmark grid can skip a
combination with the reason, and `gpu_info()` describes the GPU for machine_info ({} on CPU).
Everything heavy (torch.cuda, cupy, onnxruntime, tensorrt) is imported inside the functions, so a
CPU-only install imports this module fine.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

from supercharge.errors import first_line

GPU_EXTRA = "pip install 'supercharge-timm[gpu]'"
_TRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-libs")
TF32_ENV = "NVIDIA_TF32_OVERRIDE"


def forbid_tf32() -> str:
    """Make fp32 mean fp32 in every NVIDIA library this process loads (cuBLAS, cuDNN, TensorRT).

    TensorRT builds fp32 engines with TF32 kernels unless told otherwise, and ONNX Runtime's
    TensorRT EP has no option for it; NVIDIA's libraries all honour NVIDIA_TF32_OVERRIDE=0.
    torch and the CUDA EP turn TF32 off themselves for fp32, and fp16/bf16 do not use it, so
    nothing else changes. The sure place is the environment before Python starts (tox's gpu env
    and scripts/gpu_grid.sh set it); this call, at pytest and CLI start, covers other launches:
    it precedes the first cuBLAS handle and TensorRT builder, though not `import torch`. A value
    already in the environment is kept. Returns the value in force.
    """
    return os.environ.setdefault(TF32_ENV, "0")


def tf32_override() -> str | None:
    """NVIDIA_TF32_OVERRIDE as this process sees it ("0": TF32 off everywhere; None: unset)."""
    return os.environ.get(TF32_ENV)


def cuda_unavailable_reason() -> str | None:
    """None when PyTorch sees a CUDA device, else why not (CPU build of torch, no device)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed: pip install torch"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False): run on a machine with a GPU"
    return None


def _device_reason() -> str | None:
    """None when some CUDA device is visible, through torch or else through cupy."""
    torch_reason = cuda_unavailable_reason()
    if torch_reason is None or cupy_unavailable_reason() is None:
        return None
    return torch_reason


def provider_unavailable_reason(provider: str) -> str | None:
    """None when the installed onnxruntime lists `provider`, else what to install.

    Listing is necessary, not sufficient: a listed EP whose CUDA/cuDNN/TensorRT libraries fail
    to load is caught when the session is created (runners.ort_runner.ProviderError).
    """
    gpu = provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    try:
        import onnxruntime as ort
    except ImportError:
        package = f"{GPU_EXTRA} (onnxruntime-gpu)" if gpu else "pip install 'supercharge-timm[cpu]'"
        return f"onnxruntime is not installed: {package}"
    available = ort.get_available_providers()
    if provider in available:
        return None
    if gpu:
        fix = f"{GPU_EXTRA} (onnxruntime-gpu) instead of onnxruntime"
    else:
        fix = f"install an onnxruntime build with {provider}"
    return f"onnxruntime {ort.__version__} has no {provider}: {fix}"


def tensorrt_version() -> str | None:
    """The installed TensorRT Python package's version, or None (read without importing it)."""
    for dist in _TRT_DISTS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_unavailable_reason() -> str | None:
    """None when the TensorRT libraries are installed as a Python package, of the major version
    the installed onnxruntime's TensorRT EP was built for (where that can be read)."""
    version = tensorrt_version()
    if version is None and importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed: {GPU_EXTRA} (tensorrt-cu13)"
    needed = trt_major_needed_by_onnxruntime()
    have = _major(version)
    if needed is not None and have is not None and have != needed:
        return (
            f"TensorRT {version} is installed but onnxruntime's TensorRT EP is built for "
            f"TensorRT {needed} (libnvinfer.so.{needed}): pip install "
            f"'tensorrt-cu13>={needed},<{needed + 1}'"
        )
    return None


def _major(version: str | None) -> int | None:
    head = (version or "").split(".")[0]
    return int(head) if head.isdigit() else None


@functools.cache
def trt_major_needed_by_onnxruntime() -> int | None:
    """The TensorRT major version onnxruntime's TensorRT EP library links (libnvinfer.so.N, as
    named in its dynamic section), or None without that library. TensorRT keeps the major in
    the soname, so a TensorRT of another major leaves the EP unloadable at session creation."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        library = Path(folder) / "capi" / "libonnxruntime_providers_tensorrt.so"
        if library.is_file():
            return _linked_nvinfer_major(library.read_bytes())
    return None


def _linked_nvinfer_major(binary: bytes) -> int | None:
    """N of the first `libnvinfer.so.N` in a shared library's bytes (its dynamic string table)."""
    import re

    found = re.search(rb"libnvinfer\.so\.(\d+)\x00", binary)
    return int(found.group(1)) if found else None


def load_tensorrt() -> None:
    """Load TensorRT's libraries into the process before ONNX Runtime's TensorRT EP asks for them.

    The EP opens libnvinfer by name, and a pip-installed TensorRT keeps it in its wheel's folder,
    off the loader's path ("libnvinfer.so.10: cannot open shared object file"); importing the
    tensorrt package loads them from there. Without the package (a system install), nothing to
    do. A package that is installed but cannot load is a one-line error.
    """
    from supercharge.errors import SuperchargeError

    if importlib.util.find_spec("tensorrt") is None:
        return
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # missing CUDA libraries surface as OSError or ImportError
        raise SuperchargeError(
            f"TensorRT is installed but cannot load ({first_line(exc)}): install the "
            "tensorrt package that matches this CUDA (tensorrt-cu13), or use backend ort-cuda"
        ) from exc


def cupy_unavailable_reason() -> str | None:
    """None when cupy imports and sees a CUDA device."""
    try:
        import cupy
    except ImportError:
        return f"cupy is not installed: {GPU_EXTRA} (cupy-cuda13x)"
    except Exception as exc:  # a broken CUDA install can fail at import time
        return f"cupy cannot load ({first_line(exc)}): check the CUDA installation"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy's CUDARuntimeError and friends
        return f"cupy sees no CUDA device ({first_line(exc)}): run on a machine with a GPU"
    if count < 1:
        return "cupy sees no CUDA device: run on a machine with a GPU"
    return None


def backend_unavailable_reason(backend: str, preprocess: str | None = None) -> str | None:
    """Why `backend` (with `preprocess`, if given) cannot run on this machine, or None.

    The reason is the first blocker, in order: CUDA device, onnxruntime providers, TensorRT,
    the preprocessing's needs (cupy, an ONNX backend for baked graphs).

    Unknown backend or preprocessing names are input errors and raise SuperchargeError.
    """
    from supercharge.runners.base import backend_spec

    spec = backend_spec(backend)
    reasons: list[str | None] = []
    if spec.device == "cuda":
        if spec.name.startswith("torch"):
            reasons.append(cuda_unavailable_reason())
        else:
            reasons.append(_device_reason())
            reasons.append(provider_unavailable_reason("CUDAExecutionProvider"))
        if spec.name == "ort-trt":
            reasons.append(provider_unavailable_reason("TensorrtExecutionProvider"))
            reasons.append(tensorrt_unavailable_reason())
    elif spec.onnx:
        reasons.append(provider_unavailable_reason("CPUExecutionProvider"))
    if preprocess is not None:
        reasons.append(_preprocess_reason(preprocess, spec))
    # The most basic blocker first (no GPU, then the wrong onnxruntime, ...): one line.
    return next((r for r in reasons if r), None)


def _preprocess_reason(preprocess: str, spec: Any) -> str | None:
    from supercharge.errors import SuperchargeError
    from supercharge.pipeline import BAKED, PREPROCESS

    if preprocess not in PREPROCESS:
        raise SuperchargeError(
            f"unknown preprocessing {preprocess!r}: choose one of {', '.join(PREPROCESS)}"
        )
    if preprocess in BAKED and not spec.onnx:
        return f"preprocessing {preprocess!r} is baked into an ONNX graph, {spec.name} runs PyTorch"
    if preprocess == "cupy":
        return cupy_unavailable_reason()
    return None


def gpu_info() -> dict[str, Any]:
    """GPU 0's name, compute capability, memory, driver and CUDA versions; {} without a GPU."""
    return dict(_gpu_info())


@functools.cache
def _gpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    if cuda_unavailable_reason() is None:
        import torch

        props = torch.cuda.get_device_properties(0)
        info = {
            "gpu_name": props.name,
            "gpu_count": torch.cuda.device_count(),
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    elif cupy_unavailable_reason() is None:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        info = {
            "gpu_name": name.decode() if isinstance(name, bytes) else str(name),
            "gpu_count": cupy.cuda.runtime.getDeviceCount(),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cuda_runtime": f"{runtime // 1000}.{runtime % 1000 // 10}",
        }
    if info:
        info["driver"] = _driver_version()
    return info


def _driver_version() -> str | None:
    """The NVIDIA kernel driver's version from /proc (Linux), else None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None
