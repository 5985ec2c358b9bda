"""Compare preprocessing outputs in uint8 levels, the unit Pillow rounds to.

Outputs are normalised floats; undoing (x * std + mean) * 255 recovers the pixel level each
implementation produced, so differences read as "levels" whatever the model's mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supercharge.preprocess.spec import PreprocessSpec


@dataclass(frozen=True)
class LevelDiff:
    max: float
    mean: float
    within_1: float  # fraction of values at most 1 level apart

    def __str__(self) -> str:
        return f"max {self.max:.2f}, mean {self.mean:.4f}, {self.within_1:.4%} within 1 level"


def to_levels(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    mean = np.asarray(spec.mean, dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float64).reshape(1, 3, 1, 1)
    return (np.asarray(batch, dtype=np.float64) * std + mean) * 255.0


def level_diff(got: np.ndarray, want: np.ndarray, spec: PreprocessSpec) -> LevelDiff:
    """Level differences of two NCHW batches of the same shape."""
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: {got.shape} vs {want.shape}")
    d = np.abs(to_levels(got, spec) - to_levels(want, spec))
    # 1e-3 absorbs float32 round-off of the normalised values, far below one level
    return LevelDiff(float(d.max()), float(d.mean()), float((d <= 1.0 + 1e-3).mean()))
