"""PerSizeRunner: one prepared runner per image size, built once, least recently used evicted."""

from __future__ import annotations

import numpy as np
import pytest

from supercharge.errors import SuperchargeError
from supercharge.runners.base import Runner
from supercharge.runners.per_size import PerSizeRunner, Sized, image_size


class FakeRunner(Runner):
    """Logits = the batch's mean pixel value per image, tagged with the size it was made for."""

    backend, device = "fake-cpu", "cpu"

    def __init__(self, size):
        self.size = size
        self.prepared = 0

    def prepare(self):
        self.prepared += 1

    def run_placed(self, placed):
        assert placed.shape[1:3] == self.size, "a batch reached the runner of another size"
        return placed.reshape(len(placed), -1).mean(axis=1, keepdims=True)

    def describe(self):
        return {"backend": self.backend, "device": self.device, "size": list(self.size)}


def images(h, w, n=1, value=7):
    return np.full((n, h, w, 3), value, dtype=np.uint8)


@pytest.fixture
def made():
    return []


@pytest.fixture
def runner(made):
    def make(size):
        r = FakeRunner(size)
        made.append(r)
        return r

    return PerSizeRunner(make, "fake-cpu", "fp32", "cpu", capacity=2)


def test_each_size_gets_one_prepared_runner_reused_after(runner, made):
    runner.prepare()
    assert made == []  # nothing before a batch says which size
    runner.prepare_input(images(4, 6))
    out = runner.run(images(4, 6, n=2, value=9))
    runner.run(images(5, 6))
    runner.run(images(4, 6))
    assert [r.size for r in made] == [(4, 6), (5, 6)] and all(r.prepared == 1 for r in made)
    assert out.shape == (2, 1) and out.dtype == np.float32 and (out == 9).all()
    assert runner.built == [(4, 6), (5, 6)]


def test_placed_and_output_carry_their_sizes_runner(runner, made):
    placed = runner.place(images(3, 3, n=2))
    assert isinstance(placed, Sized) and placed.shape == (2, 3, 3, 3)
    out = runner.run_placed(placed)
    assert out.runner is made[0]
    np.testing.assert_array_equal(runner.to_host(out), np.full((2, 1), 7.0))


def test_the_least_recently_used_size_is_evicted_past_capacity(runner, made):
    for size in [(2, 2), (3, 3), (2, 2), (4, 4)]:  # (3, 3) is the least recent when (4, 4) comes
        runner.run(images(*size))
    assert runner.describe()["image_sizes"] == [[2, 2], [4, 4]]
    runner.run(images(3, 3))  # built again
    assert runner.built == [(2, 2), (3, 3), (4, 4), (3, 3)]


def test_describe_before_and_after_a_batch(runner):
    assert runner.describe() == {
        "backend": "fake-cpu",
        "precision": "fp32",
        "device": "cpu",
        "image_sizes": [],
    }
    runner.run(images(2, 5))
    runner.run(images(3, 5))
    assert runner.describe()["size"] == [3, 5]  # the most recent runner speaks
    assert runner.describe()["image_sizes"] == [[2, 5], [3, 5]]


@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 3, 4, 4), (4, 4, 3)])
def test_a_batch_that_is_not_nhwc_rgb_is_a_one_line_error(shape):
    with pytest.raises(SuperchargeError, match=r"takes NHWC RGB batches, got shape") as info:
        image_size(np.zeros(shape, dtype=np.uint8))
    assert "\n" not in str(info.value)


def test_an_nchw_graph_reads_its_size_from_the_last_two_axes():
    assert image_size(np.zeros((2, 3, 40, 50), np.float32), "NCHW") == (40, 50)
    assert image_size(np.zeros((2, 40, 50, 3), np.uint8), "NHWC") == (40, 50)
    with pytest.raises(SuperchargeError, match=r"NCHW RGB batches, got shape \(2, 40, 50, 3\)"):
        image_size(np.zeros((2, 40, 50, 3), np.uint8), "NCHW")
    with pytest.raises(ValueError, match="NHWC or NCHW"):
        PerSizeRunner(FakeRunner, "fake-cpu", "fp32", "cpu", layout="CHW")


def test_capacity_must_hold_one_runner():
    with pytest.raises(ValueError, match="at least 1"):
        PerSizeRunner(FakeRunner, "fake-cpu", "fp32", "cpu", capacity=0)
