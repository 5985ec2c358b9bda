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


def _bicubic_center_spec(size: int):
    """A timm-style eval spec (bicubic, center crop 0.875) for a size x size model input."""
    from supercharge.preprocess.spec import PreprocessSpec

    return PreprocessSpec.from_data_config(
        {
            "input_size": (3, size, size),
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "crop_mode": "center",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
        }
    )


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_numpy_preprocessing_runs_blas_on_one_thread_and_restores_it(monkeypatch):
    from threadpoolctl import threadpool_limits

    from supercharge.preprocess.array_impl import ArrayPreprocess

    spec = _bicubic_center_spec(32)
    pre = ArrayPreprocess(spec)
    seen: list[list[int]] = []
    one = pre.one
    monkeypatch.setattr(pre, "one", lambda image: (seen.append(_blas_threads()), one(image))[1])
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() and set(_blas_threads()) == {2}
        batch = pre([image, image])
        assert set(_blas_threads()) == {2}  # the caller's setting is back
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    assert seen == [[1] * len(_blas_threads())] * 2  # every image resized with one BLAS thread


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_weights_for_kept_rows_are_those_rows_of_the_full_matrix(interpolation):
    full = pil_resample.weights(40, 300, interpolation)
    np.testing.assert_array_equal(
        pil_resample.weights(40, 300, interpolation, (100, 124)), full[100:124]
    )
    with pytest.raises(ValueError, match=r"not within 0\.\.300"):
        pil_resample.weights(40, 300, interpolation, (290, 310))


@pytest.mark.parametrize("n_in", [2, 32, 224, 256, 333, 640])
@pytest.mark.parametrize("n_out", [7, 40, 48, 300])
def test_nearest_weights_pick_pillows_pixels(n_in, n_out):
    """Pillow's NEAREST source pixels, on both axes: a running sum of scale, not
    floor((i + 0.5) * scale) (224 -> 48 differs at i = 13, 34, 37, 40, 43, 46)."""
    from PIL import Image

    line = np.arange(n_in) % 256
    rows = Image.fromarray(np.repeat(line.astype(np.uint8)[None, :, None], 3, axis=2))
    cols = Image.fromarray(np.repeat(line.astype(np.uint8)[:, None, None], 3, axis=2))
    want_w = np.asarray(rows.resize((n_out, 1), Image.Resampling.NEAREST))[0, :, 0]
    want_h = np.asarray(cols.resize((1, n_out), Image.Resampling.NEAREST))[:, 0, 0]
    picked = pil_resample.weights(n_in, n_out, "nearest").argmax(axis=1) % 256
    np.testing.assert_array_equal(picked, want_w)
    np.testing.assert_array_equal(picked, want_h)


def test_a_thin_strip_is_resized_without_the_full_weight_matrix():
    """1 x 5000 px resized to a 256 short side is 256 x 1.28 M before the crop: its full weight
    matrix would be 51 GB. Only the 224 kept columns' weights are built."""
    import tracemalloc

    from supercharge.preprocess.array_impl import ArrayPreprocess

    spec = _bicubic_center_spec(224)
    strip = np.random.default_rng(1).integers(0, 256, (1, 5000, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        batch = ArrayPreprocess(spec)([strip])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert batch.shape == (1, 3, 224, 224) and np.isfinite(batch).all()
    assert peak < 200 * 2**20
