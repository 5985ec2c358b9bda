"""Pipeline feeds: how decoded images become the batches a baked graph takes."""

from __future__ import annotations

import numpy as np

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
