"""numpy and cupy preprocessing from one code path (array-namespace style).

Takes decoded uint8 HWC RGB images (a batch may mix sizes), returns a float32 NCHW batch in the
namespace it was built for: numpy on the host, cupy on the GPU. The resize reproduces Pillow's
two 1-D passes with its quantised weights (pil_resample.py), in float64 so the integer
arithmetic is exact; the geometry is spec.py's, which mirrors timm's eval transform.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL

from supercharge.preprocess import pil_resample
from supercharge.preprocess.spec import PreprocessSpec

_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def pass_order(h: int, w: int, out_h: int, out_w: int) -> str:
    """Which 1-D pass runs first: 'hv' (horizontal first) or 'vh'.

    The order changes the result because each pass rounds to uint8. Pillow >= 13 runs the
    vertical pass first when the height shrinks by more than twice as many pixels as the width
    ("to make the horizontal pass faster", libImaging/Resample.c, ImagingResampleInner);
    earlier Pillows always run the horizontal pass first.
    """
    if _PILLOW_MAJOR < 13:
        return "hv"
    dh, dw = h - out_h, w - out_w
    return "vh" if dh > 0 and dh > 2 * dw else "hv"


# Output pixels per banded matmul: small enough to skip most zeros, big enough for BLAS. A block
# reads (block + taps) inputs for block x taps useful ones, and a strong downscale has many taps:
# a 1920x1080 frame to lite0's 455x256 (17 taps) took 40-60 ms with 64, 29-42 with 16 (numpy,
# one BLAS thread, alternating in one process); 600x400 4.4-5 ms with 16, no slower. Exact
# either way: the skipped terms are zeros.
_BLOCK = 16


def banded_blocks(wm: np.ndarray, block: int = _BLOCK) -> list[tuple[slice, slice, np.ndarray]]:
    """Split a resampling matrix [out, in] into (out rows, in columns, dense block) triples.

    Each output pixel reads only a short run of inputs (its filter support), so a block of
    consecutive outputs reads one contiguous input span; multiplying only that span skips the
    zeros of the full matrix (600 -> 438 columns: ~25 instead of 600 inputs per block). The
    skipped terms are exact zeros, so the sums are the same.
    """
    nonzero = wm != 0
    first = nonzero.argmax(axis=1)
    last = wm.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1)
    blocks = []
    for start in range(0, wm.shape[0], block):
        rows = slice(start, min(start + block, wm.shape[0]))
        cols = slice(int(first[rows].min()), int(last[rows].max()) + 1)
        blocks.append((rows, cols, np.ascontiguousarray(wm[rows, cols])))
    return blocks


@functools.cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Host BLAS on the calling thread only, for the length of a `with` block.

    The model runtime that runs next owns the cores. OpenBLAS workers busy-wait after a matmul,
    so with them the runtime found a core taken: torch-cpu end to end after numpy preprocessing
    measured 32-48 ms and bimodal, 18-24 ms steady with one BLAS thread (ORT CPU unchanged,
    7.5 ms; docs/results/cpu-2026-11-29.md). The limit is process-wide while it holds.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


class ArrayPreprocess:
    """The model's eval transform on numpy (host) or cupy (device) arrays."""

    def __init__(self, spec: PreprocessSpec, xp: Any = np) -> None:
        self.spec = spec
        self.xp = xp
        self.name = "numpy" if xp is np else getattr(xp, "__name__", "array")
        self._mean = xp.asarray(np.array(spec.mean, dtype=np.float64).reshape(3, 1, 1))
        self._std = xp.asarray(np.array(spec.std, dtype=np.float64).reshape(3, 1, 1))
        self._fill = xp.asarray(np.array(spec.fill, dtype=np.float64))
        self._weights: dict[tuple[Any, ...], list[tuple[slice, Any]]] = {}
        # numpy's matmuls share the host cores with the runtime; cupy's run on the GPU
        self._threads = single_threaded_blas if xp is np else contextlib.nullcontext

    def __call__(self, images: Sequence[Any]) -> Any:
        xp = self.xp
        with self._threads():
            return xp.stack([self.one(im) for im in images]).astype(xp.float32)

    def one(self, image: Any) -> Any:
        """One uint8 HWC RGB image (numpy/cupy array or RGB PIL image) -> float64 CHW."""
        xp = self.xp
        x = xp.asarray(
            np.asarray(image) if not hasattr(image, "__cuda_array_interface__") else image
        )
        if x.ndim != 3 or x.shape[2] != 3 or x.dtype != xp.uint8:
            raise ValueError(
                f"image of shape {tuple(x.shape)} and dtype {x.dtype}: expected uint8 HxWx3 RGB"
            )
        h, w = int(x.shape[0]), int(x.shape[1])
        g = self.spec.geometry(h, w)
        th, tw = g.out
        if any(g.pad):
            x = self._pad(self.resize(x, *g.resized), g.pad)
            x = x[g.top : g.top + th, g.left : g.left + tw]
        else:  # compute only the output pixels the crop keeps
            rows, cols = slice(g.top, g.top + th), slice(g.left, g.left + tw)
            x = self.resize(x, *g.resized, rows=rows, cols=cols)
        x = xp.transpose(x, (2, 0, 1)) / 255.0
        return (x - self._mean) / self._std

    def resize(
        self,
        x: Any,
        out_h: int,
        out_w: int,
        rows: slice = slice(None),
        cols: slice = slice(None),
    ) -> Any:
        """Pillow-exact separable resize of an HWC array of uint8 values (uint8 or float64);
        returns float64.

        `rows`/`cols` select a window of the output; only that window is computed (each output
        pixel depends on its own weights only, so the result is the same as crop-after-resize).
        The input is cast to float64 block by block, never whole (a 12 MP photo would be 288 MB).
        """
        h, w = int(x.shape[0]), int(x.shape[1])

        def horizontal(a: Any) -> Any:
            return self._pass(a, w, out_w, cols, axis=1) if w != out_w else a[:, cols]

        def vertical(a: Any) -> Any:
            return self._pass(a, h, out_h, rows, axis=0) if h != out_h else a[rows]

        y = (
            vertical(horizontal(x))
            if pass_order(h, w, out_h, out_w) == "hv"
            else horizontal(vertical(x))
        )
        return y.astype(self.xp.float64, copy=False)

    def _pass(self, x: Any, n_in: int, n_out: int, window: slice, axis: int) -> Any:
        xp = self.xp
        key = (n_in, n_out, window.start, window.stop)
        if key not in self._weights:
            kept = range(n_out)[window]  # only the outputs the crop keeps: [out, in]
            wm = pil_resample.weights(n_in, n_out, self.spec.interpolation, (kept.start, kept.stop))
            self._weights[key] = [(c, xp.asarray(b)) for _, c, b in banded_blocks(wm)]
        parts = []
        for cols, wb in self._weights[key]:
            if axis == 0:  # rows: [out, span] @ [span, W, C]
                span = x[cols].astype(xp.float64, copy=False)  # the second pass is float64 already
                parts.append(xp.tensordot(wb, span, axes=([1], [0])))
            else:  # columns: [H, span, C] -> [H, out, C]
                span = x[:, cols].astype(xp.float64, copy=False)
                parts.append(xp.transpose(xp.tensordot(wb, span, axes=([1], [1])), (1, 0, 2)))
        return pil_resample.finish_pass(xp, xp.concatenate(parts, axis=axis))

    def _pad(self, x: Any, pad: tuple[int, int, int, int]) -> Any:
        xp = self.xp
        left, top, right, bottom = pad
        h, w = int(x.shape[0]), int(x.shape[1])
        out = xp.empty((h + top + bottom, w + left + right, 3), dtype=x.dtype)
        out[...] = self._fill
        out[top : top + h, left : left + w] = x
        return out
