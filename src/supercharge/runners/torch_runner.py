"""PyTorch eager runner: the reference every other backend is measured against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from supercharge.runners.base import Runner

if TYPE_CHECKING:
    from supercharge.models import ModelBundle


class TorchRunner(Runner):
    def __init__(self, bundle: ModelBundle, device: str = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.backend = f"torch-{self.device.type}"
        self._prepared = False

    def prepare(self) -> None:
        if self._prepared:
            return
        # fp32 means fp32: no TF32 shortcuts in the reference.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.bundle.model.to(self.device).eval()
        self._prepared = True

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.bundle.model(x).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": str(self.device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
