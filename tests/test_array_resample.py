"""The numpy/cupy path's banded resampling: the same sums as the full matrix, fewer of them."""

from __future__ import annotations

import numpy as np
import pytest

from supercharge.preprocess import pil_resample
from supercharge.preprocess.array_impl import banded_blocks


@pytest.mark.parametrize(
    ("n_in", "n_out", "interpolation"),
    [(600, 438, "bicubic"), (4000, 292, "bicubic"), (100, 300, "bilinear"), (333, 224, "lanczos")],
)
def test_banded_blocks_give_the_dense_product_exactly(n_in, n_out, interpolation):
    wm = pil_resample.weights(n_in, n_out, interpolation)
    x = np.random.default_rng(n_in).integers(0, 256, (n_in, 7)).astype(np.float64)
    blocks = banded_blocks(wm, block=32)
    banded = np.concatenate([b @ x[cols] for _, cols, b in blocks])
    np.testing.assert_array_equal(banded, wm @ x)  # 8-bit x 22-bit terms: exact in float64
    assert [rows.start for rows, _, _ in blocks] == list(range(0, n_out, 32))
    # what the blocks skip is only zeros, and on a downscale that is most of the matrix
    assert sum(b.size for _, _, b in blocks) < wm.size
    if n_in > 2 * n_out:
        assert sum(b.size for _, _, b in blocks) < wm.size / 4
