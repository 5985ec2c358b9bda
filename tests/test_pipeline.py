"""Pipeline feeds: how decoded images become the batches a baked graph takes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from supercharge.pipeline import same_size_batches


def _frames(*shapes: tuple[int, int]) -> list[np.ndarray]:
    return [np.full((h, w, 3), i, dtype=np.uint8) for i, (h, w) in enumerate(shapes)]


def test_consecutive_same_size_images_become_one_batch_in_order():
    frames = _frames((4, 6), (4, 6), (5, 5), (4, 6))
    batches = same_size_batches(frames)
    assert [b.shape for b in batches] == [(2, 4, 6, 3), (1, 5, 5, 3), (1, 4, 6, 3)]
    order = [int(frame[0, 0, 0]) for batch in batches for frame in batch]
    assert order == [0, 1, 2, 3]


def test_a_single_image_is_passed_as_a_view_not_copied():
    (frame,) = _frames((4, 6))
    (batch,) = same_size_batches([frame])
    assert batch.shape == (1, 4, 6, 3) and np.shares_memory(batch, frame)
    assert batch.flags.c_contiguous  # what session.run reads without another copy


BORDER_CONFIG = {  # timm's border crop mode: keep the ratio, fit the longest side, pad
    "input_size": (3, 96, 96),
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "border",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}


@pytest.mark.parametrize("preprocess", ["baked", "separable", "numpy", "timm"])
def test_an_image_too_thin_to_resize_is_one_line_before_any_runtime_sees_it(preprocess):
    """A 1x2000 strip fitted into 96 px keeps a 0 px side; timm's transform fails on it too
    (PIL's ValueError). The in-graph preprocessing would fail deep inside ONNX Runtime (a Range
    of inf elements); each feed says it in one line naming the sizes, timm's included."""
    from PIL import Image

    from supercharge.errors import SuperchargeError
    from supercharge.pipeline import make_feed
    from supercharge.preprocess.reference import timm_transform

    strip = Image.new("RGB", (2000, 1))
    with pytest.raises(ValueError):  # timm's own transform (PIL refuses a 0 px side)
        timm_transform(BORDER_CONFIG)(strip)
    feed = make_feed(preprocess, BORDER_CONFIG)
    message = "a 1x2000 image resizes to 0x96 (border mode, scale 96x96): too thin to resize"
    with pytest.raises(SuperchargeError, match=re.escape(message)):
        feed([strip])
    assert len(feed([Image.new("RGB", (200, 30))])) == 1  # a thin one that fits is fed
