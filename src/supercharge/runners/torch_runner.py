"""PyTorch runner (CPU and CUDA): the reference every other backend is measured against.

fp32 is strict fp32 (TF32 off) so it can serve as the reference; fp16/bf16 go through
torch.autocast, which keeps numerically touchy ops in fp32 as PyTorch users would run them.
channels_last, CUDA transfers and torch.compile are options so a benchmark can show what each buys.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from supercharge.errors import SuperchargeError
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
        # fp32 means fp32: no TF32 shortcuts in the reference (process-wide switches).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = self.bundle.model
        if self.device != "cpu" or self.channels_last or self.compile:
            # Moving or reformatting mutates the module: keep the shared bundle's CPU model intact.
            model = copy.deepcopy(model)
        model = model.to(self._device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model = torch.compile(model)
        self._model = model
        if self.compile or self.device == "cuda":
            # Compilation and cuDNN autotuning happen on the first call per shape: do them here.
            for n in self.batch_sizes:
                self.run(np.zeros((n, *self.bundle.input_size), dtype=np.float32))

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
        }
        if self.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self._device)
        return info
