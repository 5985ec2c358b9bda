"""Pillow's resampling, reproduced: filter weights, fixed-point quantisation and the two passes.

Pillow resizes uint8 images separably: one 1-D pass per axis, each with per-output-pixel filter
weights (normalised, then quantised to 22 fractional bits) and a round-half-up + clip to uint8
after each pass. The weights here are the same numbers as Pillow's `precompute_coeffs` and
`normalize_coeffs_8bpc` (src/libImaging/Resample.c), laid out as dense [out, in] matrices so
any array library (numpy, cupy) or graph runtime (ONNX MatMul) can apply them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

PRECISION_BITS = 32 - 8 - 2
ONE = float(1 << PRECISION_BITS)
HALF = float(1 << (PRECISION_BITS - 1))


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _sinc(x: np.ndarray) -> np.ndarray:
    return np.sinc(x)  # sin(pi x) / (pi x), 1 at 0


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    px = x * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        core = np.sin(px) / px * (np.float32(0.54) + np.float32(0.46) * np.cos(px))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, core))


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)


# name -> (filter, support), as in Resample.c. "nearest" has no filter: Pillow picks pixels.
FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bicubic": (_bicubic, 2.0),
    "bilinear": (_bilinear, 1.0),
    "box": (_box, 0.5),
    "hamming": (_hamming, 1.0),
    "lanczos": (_lanczos, 3.0),
}


@lru_cache(maxsize=256)
def weights(
    in_size: int, out_size: int, interpolation: str, rows: tuple[int, int] | None = None
) -> np.ndarray:
    """Dense [out_size, in_size] float64 matrix of Pillow's quantised integer weights, or only
    its `rows` = (start, stop) (the outputs a crop keeps: a 1x5000 strip resized to a 256 short
    side has 1.28 M outputs on its long side, 51 GB as a full matrix, 224 rows kept).

    Row i holds the coefficients Pillow uses for output pixel i; applying it and then
    `finish_pass` gives exactly Pillow's uint8 result for that pass.
    """
    start, stop = rows if rows is not None else (0, out_size)
    if not 0 <= start <= stop <= out_size:
        raise ValueError(f"rows {rows} are not within 0..{out_size}")
    if interpolation == "nearest":
        return _nearest_matrix(in_size, out_size, start, stop) * ONE
    filt, support = FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    out = np.zeros((stop - start, in_size), dtype=np.float64)
    for i in range(start, stop):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = np.arange(xmin, xmax, dtype=np.float64)
        w = filt((taps - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        # normalize_coeffs_8bpc: round half away from zero to 22 fractional bits
        out[i - start, xmin:xmax] = np.trunc(w * ONE + np.where(w < 0, -0.5, 0.5))
    out.setflags(write=False)
    return out


def nearest_sources(in_size: int, out_size: int) -> np.ndarray:
    """int64 [out_size]: the input pixel Pillow's NEAREST copies to each output pixel.

    Pillow (Geometry.c, ImagingScaleAffine) walks a double x = scale / 2, adding scale once per
    output and truncating: a running sum, not floor((i + 0.5) * scale). The two differ where
    (i + 0.5) * scale is a whole number and the sum drifts a rounding error below it (224 -> 48
    at i = 13, 34, 37, 40, 43, 46: the pixel before). np.add.accumulate adds in the same order.
    """
    scale = in_size / out_size
    steps = np.full(out_size, scale)
    steps[0] = scale * 0.5
    return np.minimum(np.add.accumulate(steps).astype(np.int64), in_size - 1)


def _nearest_matrix(in_size: int, out_size: int, start: int, stop: int) -> np.ndarray:
    src = nearest_sources(in_size, out_size)[start:stop]
    m = np.zeros((stop - start, in_size), dtype=np.float64)
    m[np.arange(stop - start), src] = 1.0
    return m


def finish_pass(xp, acc):
    """Pillow's per-pass rounding: (acc + 2^21) >> 22, clipped to uint8 range (as float)."""
    return xp.clip(xp.floor((acc + HALF) / ONE), 0.0, 255.0)
