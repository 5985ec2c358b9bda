"""Top-k classification of images: the `supercharge predict` job, one image per line block."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float  # 0..1

    def __str__(self) -> str:
        return f"{self.label}: {self.probability * 100:.2f}%"


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[list[Prediction]]:
    """Per row of logits, the k most probable classes, most probable first."""
    probs = torch.from_numpy(np.asarray(logits, dtype=np.float32)).softmax(dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [
        [Prediction(int(i), class_names[int(i)], float(p)) for p, i in zip(vs, idx, strict=True)]
        for vs, idx in zip(values, indices, strict=True)
    ]
