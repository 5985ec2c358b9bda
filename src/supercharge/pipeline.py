"""A preprocessing choice plus a runner: decoded images in, host logits out.

The preprocessing names are the suite's axis: `timm` (PIL, the reference), `numpy` and `cupy`
(one array-namespace implementation), `baked` (the eval transform inside the ONNX graph, any
image size, fed decoded uint8 NHWC images), `separable` (the same, built for each image size the
pipeline meets: Pillow's passes as banded MatMuls over the crop window, no Resize node) and
`seed` (the blog post's flawed baked graph, fed float NCHW). Baked graphs take one image size per
call: consecutive images of one size go in one batch, a change of size starts the next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from supercharge.errors import SuperchargeError
from supercharge.runners.base import Runner, create_runner

if TYPE_CHECKING:
    from supercharge.cache import ArtifactCache
    from supercharge.models import ModelBundle

PREPROCESS = ("timm", "numpy", "cupy", "baked", "separable", "seed")
BAKED = ("baked", "separable", "seed")


@dataclass
class Pipeline:
    preprocess: str
    runner: Runner
    feed: Callable[[Sequence[Image.Image]], list[Any]]  # images -> runner input batches

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded images -> float32 host logits [len(images), classes], end to end."""
        return np.concatenate([self.runner.run(batch) for batch in self.feed(images)])

    def prepare_for(self, images: Sequence[Image.Image]) -> None:
        """The one-off work these images need before timing: a separable graph is built and
        loaded for each new image size (runners.per_size); nothing for the other pipelines."""
        for batch in self.feed(images):
            self.runner.prepare_input(batch)

    def placed_batches(self, images: Sequence[Image.Image]) -> list[Any]:
        """Preprocess and place once, outside any timing: what runner.run_placed() takes.

        A benchmark's "model alone" group times `runner.run_placed(p)` over these; the end-to-end
        group times `pipeline(images)`.
        """
        return [self.runner.place(batch) for batch in self.feed(images)]

    def run_placed(self, placed: Sequence[Any]) -> np.ndarray:
        """Host logits for placed_batches() output (the model plus the copy back)."""
        return np.concatenate([self.runner.to_host(self.runner.run_placed(p)) for p in placed])

    def describe(self) -> dict[str, Any]:
        """runner.describe() plus the preprocessing (JSON-able)."""
        return {**self.runner.describe(), "preprocess": self.preprocess}


def _host(array: Any) -> np.ndarray:
    """Host copy of a numpy or cupy array (cupy exposes .get())."""
    return array.get() if hasattr(array, "get") else array


def make_feed(
    preprocess: str, data_config: dict, device: str = "cpu"
) -> Callable[[Sequence[Image.Image]], list[Any]]:
    """The preprocessing half of a pipeline for `preprocess`, feeding a runner on `device`.

    "cupy" keeps its batch on the GPU for a "cuda" runner (which takes it through DLPack) and
    copies it to the host only for a "cpu" one.
    """
    from supercharge.preprocess.spec import PreprocessSpec

    if preprocess == "timm":
        from supercharge.preprocess.reference import TimmPreprocess

        timm_pre = TimmPreprocess(data_config)
        return lambda images: [timm_pre(images)]
    if preprocess in ("numpy", "cupy"):
        from supercharge.preprocess.array_impl import ArrayPreprocess

        xp = np if preprocess == "numpy" else _cupy()
        array_pre = ArrayPreprocess(PreprocessSpec.from_data_config(data_config), xp)
        if preprocess == "cupy" and device != "cpu":
            return lambda images: [array_pre([np.asarray(im) for im in images])]
        return lambda images: [_host(array_pre([np.asarray(im) for im in images]))]
    if preprocess in ("baked", "separable"):
        spec = PreprocessSpec.from_data_config(data_config)
        sizes_seen: set[tuple[int, int]] = set()

        def checked(batches: list[np.ndarray]) -> list[np.ndarray]:
            # the graph computes the geometry itself and would fail deep inside on a size timm's
            # transform refuses too: say so once per image size, off the steady-state path
            for batch in batches:
                size = batch.shape[1:3]
                if size not in sizes_seen:
                    spec.resized_size(*size)  # raises SuperchargeError with the sizes
                    sizes_seen.add(size)
            return batches

        return lambda images: checked(same_size_batches([np.asarray(im) for im in images]))
    if preprocess == "seed":
        return lambda images: [
            b.astype(np.float32).transpose(0, 3, 1, 2)
            for b in same_size_batches([np.asarray(im) for im in images])
        ]
    raise SuperchargeError(
        f"unknown preprocessing {preprocess!r}: choose one of {', '.join(PREPROCESS)}"
    )


def same_size_batches(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Stack runs of consecutive same-shape HWC arrays into NHWC batches, keeping the order.

    A run of one image becomes a view (no copy: np.stack would copy the frame once more on
    the timed path, 0.01 ms for a 600x400 photo)."""
    runs: list[list[np.ndarray]] = []
    for a in arrays:
        if runs and runs[-1][0].shape == a.shape:
            runs[-1].append(a)
        else:
            runs.append([a])
    return [np.stack(run) if len(run) > 1 else run[0][None] for run in runs]


def _cupy() -> Any:
    try:
        import cupy
    except ImportError:
        raise SuperchargeError(
            "--preprocess cupy needs cupy and a CUDA GPU: pip install 'supercharge-timm[gpu]'"
        ) from None
    return cupy


def build_pipeline(
    bundle: ModelBundle,
    cache: ArtifactCache,
    backend: str,
    preprocess: str,
    precision: str = "fp32",
    batch_sizes: Sequence[int] = (1,),
    **options: Any,
) -> Pipeline:
    """`preprocess` feeding a prepared `backend` runner at `precision`.

    batch_sizes are the batch sizes the runner warms up for (TensorRT builds its profile for
    them); options are the backend's keywords (supercharge.runners.BACKENDS[backend].options).
    A baked preprocessing ("baked", "separable", "seed") selects the merged ONNX graph and feeds
    it images ("separable": one graph per image size, built when the size first arrives).
    """
    from supercharge.runners.base import backend_spec

    spec = backend_spec(backend)
    if preprocess not in PREPROCESS:
        raise SuperchargeError(
            f"unknown preprocessing {preprocess!r}: choose one of {', '.join(PREPROCESS)}"
        )
    feed = make_feed(preprocess, bundle.data_config, spec.device)
    graph = preprocess if preprocess in BAKED else "model"
    runner = create_runner(
        backend, bundle, cache, graph, precision, batch_sizes=tuple(batch_sizes), **options
    )
    return Pipeline(preprocess, runner, feed)
