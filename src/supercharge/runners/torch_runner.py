"""PyTorch runner (CPU and CUDA): the reference every other backend is measured against.

fp32 is strict fp32 (TF32 off) so it can serve as the reference; fp16/bf16 go through
torch.autocast, which keeps numerically touchy ops in fp32 as PyTorch users would run them.
channels_last, CUDA transfers and torch.compile are options so a benchmark can show what each buys;
"compile": True in describe() means compiled code ran: a switched-off TorchDynamo or a failed
compilation is an error, never an eager run under that label.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from supercharge.errors import SuperchargeError, first_line, out_of_memory
from supercharge.runners.base import Runner

if TYPE_CHECKING:
    from supercharge.models import ModelBundle

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    def __init__(
        self,
        bundle: ModelBundle,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        batch_sizes: Sequence[int] = (1,),
    ) -> None:
        if precision != "fp32" and precision not in _DTYPES:
            raise SuperchargeError(
                f"torch runner has no precision {precision!r}: use fp32, fp16 or bf16"
            )
        self.bundle = bundle
        self._device = torch.device(device)
        self.device = self._device.type
        self.backend = f"torch-{self.device}"
        self.precision = precision
        self.channels_last = channels_last
        self.compile = compile
        self.batch_sizes = tuple(batch_sizes)
        self._model: Any = None

    def prepare(self) -> None:
        if self._model is not None:
            return
        strict_fp32()
        model = self.bundle.model
        if self.device != "cpu" or self.channels_last or self.compile:
            # Moving or reformatting mutates the module: keep the shared bundle's CPU model intact.
            model = copy.deepcopy(model)
        model = model.to(self._device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            off = _dynamo_disabled()
            if off:
                raise SuperchargeError(
                    f"compile=True but TorchDynamo is disabled ({off}): the model would run "
                    "eager and be reported compiled; unset it, or run without compile"
                )
            model = torch.compile(model)
        self._model = model
        if self.compile or self.device == "cuda":
            # Compilation and cuDNN autotuning happen on the first call per shape: do them here.
            self._warm_up()

    def _warm_up(self) -> None:
        """A run per batch size. Compilation happens here, with dynamo's suppress_errors off:
        a compile that fails is an error, never a silent eager run reported as compiled."""
        import torch._dynamo

        try:
            with torch._dynamo.config.patch(suppress_errors=False):
                for n in self.batch_sizes:
                    self.run(np.zeros((n, *self.bundle.input_size), dtype=np.float32))
        except Exception as exc:
            if not self.compile or out_of_memory(exc):
                raise
            raise SuperchargeError(
                f"torch.compile cannot compile {self.bundle.name} ({_compile_reason(exc)}): "
                "run without compile, or report it to PyTorch with the model name and versions"
            ) from exc

    def _autocast(self) -> Any:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device, dtype=_DTYPES[self.precision])

    def place(self, batch: Any) -> torch.Tensor:
        """Batch -> float32 tensor on the device.

        A host array is copied to the GPU; a device array (cupy) is taken through DLPack without
        a copy, so GPU preprocessing never round-trips through the host.
        """
        if isinstance(batch, torch.Tensor):
            x = batch
        elif isinstance(batch, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(batch))
        elif hasattr(batch, "__dlpack__"):
            x = torch.from_dlpack(batch)
        else:
            x = torch.from_numpy(np.asarray(batch))
        if x.dtype != torch.float32:
            x = x.float()
        if self.device == "cuda" and x.device.type == "cpu":
            x = x.to(self._device)  # one copy per batch: pinning it first would cost more
        elif self.device == "cpu" and x.device.type != "cpu":
            x = x.cpu()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.device == "cuda":
            torch.cuda.synchronize(self._device)  # placed means there: run_placed times the model
        return x

    def run_placed(self, placed: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            out = self._model(placed)
        if self.device == "cuda":
            torch.cuda.synchronize(self._device)
        return out

    def to_host(self, out: torch.Tensor) -> np.ndarray:
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.backend,
            "precision": self.precision,
            "device": str(self._device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "channels_last": self.channels_last,
            "compile": self.compile,
            "autocast": self.precision != "fp32",
            "fp32_precision": fp32_precision(),
        }
        if self.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self._device)
        return info


def strict_fp32() -> None:
    """fp32 means fp32 in the reference: no TF32 (cuBLAS, cuDNN) and no bf16 matmuls on CPU,
    which `torch.set_float32_matmul_precision("medium")` (a common recipe, set by a user's
    conftest or another library in the process) turns on through oneDNN. Process-wide switches;
    autocast's fp16/bf16 are unaffected. The legacy switches, as torch.onnx reads them: torch
    2.9+'s per-operator `fp32_precision` settings make torch raise when code reads a legacy
    switch they disagree with, and "highest" here leaves the two agreeing."""
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def fp32_precision() -> str:
    """torch's float32 matmul precision for describe(): "highest" is strict fp32."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError as exc:  # legacy and per-operator settings disagree (torch 2.9+)
        return f"unknown ({first_line(exc)[:80]})"


def _dynamo_disabled() -> str | None:
    """The switch that turns torch.compile into a no-op, if one is set (None: compile works)."""
    import torch._dynamo

    if os.environ.get("TORCHDYNAMO_DISABLE", "") == "1":
        return "TORCHDYNAMO_DISABLE=1"
    if getattr(torch._dynamo.config, "disable", False):
        return "torch._dynamo.config.disable, TORCH_COMPILE_DISABLE=1"
    return None


def _compile_reason(exc: BaseException) -> str:
    """The innermost cause of a compile failure (dynamo wraps the backend's own error, as
    BackendCompilerFailed.inner_exception or as the cause)."""
    while (inner := getattr(exc, "inner_exception", None) or exc.__cause__) is not None:
        exc = inner
    return f"{type(exc).__name__}: {first_line(exc)}"[:200]
