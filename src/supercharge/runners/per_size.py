"""One runner per image size: for graphs built for a single input size (the separable graph),
and for TensorRT, whose engines fix every input shape's range (runners.base per_size_graphs).

The separable preprocessing graph bakes Pillow's resampling weights and the crop for one image
size into the ONNX file as constants (the baked graph computes them per run, for any size, at a
few tenths of a millisecond on the 2-core CPU; the separable graph's shapes are static). A
camera feed has one size; a folder of photos has a few. `PerSizeRunner` builds the graph, the
session and the warm-up for a size the first time it sees it (`prepare_input`, which a benchmark
calls before timing) and keeps the `capacity` most recently used runners; the artifacts stay in
the cache, so a size seen again after eviction costs a session, not a build.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from supercharge.errors import SuperchargeError
from supercharge.runners.base import Runner

Size = tuple[int, int]
CAPACITY = 4  # sizes held at once; each holds a session with its own copy of the weights


@dataclass(frozen=True)
class Sized:
    """A placed batch or an output, with the runner of its image size."""

    runner: Runner
    value: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)


def image_size(batch: Any, layout: str = "NHWC") -> Size:
    """(H, W) of an RGB image batch (numpy or cupy) laid out as `layout` ("NHWC" or "NCHW")."""
    shape = tuple(batch.shape)
    channels = 3 if layout == "NHWC" else 1
    if len(shape) != 4 or shape[channels] != 3:
        raise SuperchargeError(
            f"this graph takes {layout} RGB batches, got shape {shape}: pass decoded images "
            "through the pipeline"
        )
    return (int(shape[1]), int(shape[2])) if layout == "NHWC" else (int(shape[2]), int(shape[3]))


class PerSizeRunner(Runner):
    """Delegates each batch to the prepared runner of its image size, made by `make(size)`."""

    def __init__(
        self,
        make: Callable[[Size], Runner],
        backend: str,
        precision: str,
        device: str,
        capacity: int = CAPACITY,
        layout: str = "NHWC",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity {capacity} must be at least 1")
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout {layout!r} is not NHWC or NCHW")
        self.layout = layout
        self.make = make
        self.backend = backend
        self.precision = precision
        self.device = device
        self.capacity = capacity
        self._runners: OrderedDict[Size, Runner] = OrderedDict()
        self.built: list[Size] = []  # every size a runner was made for, in order (evictions too)

    def prepare(self) -> None:
        """Nothing to do before the first batch: the graph depends on its image size."""

    def prepare_input(self, batch: Any) -> None:
        self.runner_for(image_size(batch, self.layout))

    def runner_for(self, size: Size) -> Runner:
        runner = self._runners.get(size)
        if runner is None:
            runner = self.make(size)
            runner.prepare()
            self.built.append(size)
            self._runners[size] = runner
            while len(self._runners) > self.capacity:
                self._runners.popitem(last=False)
        self._runners.move_to_end(size)
        return runner

    def place(self, batch: Any) -> Sized:
        runner = self.runner_for(image_size(batch, self.layout))
        return Sized(runner, runner.place(batch))

    def run_placed(self, placed: Sized) -> Sized:
        return Sized(placed.runner, placed.runner.run_placed(placed.value))

    def to_host(self, out: Sized) -> np.ndarray:
        return out.runner.to_host(out.value)

    def describe(self) -> dict[str, Any]:
        """The most recently used size's runner, plus the sizes held."""
        base = {"backend": self.backend, "precision": self.precision, "device": self.device}
        if self._runners:
            base = next(reversed(self._runners.values())).describe()
        return {**base, "image_sizes": [list(s) for s in self._runners]}
