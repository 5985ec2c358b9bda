"""A preprocessing choice plus a runner: decoded images in, host logits out.

The preprocessing names are the suite's axis: `timm` (PIL, the reference), `numpy` and `cupy`
(one array-namespace implementation), `baked` (the eval transform inside the ONNX graph, fed
decoded uint8 NHWC images) and `seed` (the blog post's flawed baked graph, fed float NCHW).
Baked graphs take one image size per call, so images of different sizes run one at a time.
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

PREPROCESS = ("timm", "numpy", "cupy", "baked", "seed")
BAKED = ("baked", "seed")


@dataclass
class Pipeline:
    preprocess: str
    runner: Runner
    feed: Callable[[Sequence[Image.Image]], list[Any]]  # images -> runner input batches

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.concatenate([self.runner.run(batch) for batch in self.feed(images)])


def _host(array: Any) -> np.ndarray:
    """Host copy of a numpy or cupy array (cupy exposes .get())."""
    return array.get() if hasattr(array, "get") else array


def make_feed(preprocess: str, data_config: dict) -> Callable[[Sequence[Image.Image]], list[Any]]:
    """The host-side half of a pipeline for `preprocess`."""
    from supercharge.preprocess.spec import PreprocessSpec

    if preprocess == "timm":
        from supercharge.preprocess.reference import TimmPreprocess

        timm_pre = TimmPreprocess(data_config)
        return lambda images: [timm_pre(images)]
    if preprocess in ("numpy", "cupy"):
        from supercharge.preprocess.array_impl import ArrayPreprocess

        xp = np if preprocess == "numpy" else _cupy()
        array_pre = ArrayPreprocess(PreprocessSpec.from_data_config(data_config), xp)
        return lambda images: [_host(array_pre([np.asarray(im) for im in images]))]
    if preprocess == "baked":
        return lambda images: [np.asarray(im)[None] for im in images]
    if preprocess == "seed":
        return lambda images: [
            np.asarray(im, dtype=np.float32).transpose(2, 0, 1)[None] for im in images
        ]
    raise SuperchargeError(
        f"unknown preprocessing {preprocess!r}: choose one of {', '.join(PREPROCESS)}"
    )


def _cupy() -> Any:
    try:
        import cupy
    except ImportError:
        raise SuperchargeError(
            "--preprocess cupy needs cupy and a CUDA GPU: pip install 'supercharge-timm[gpu]'"
        ) from None
    return cupy


def build_pipeline(
    bundle: ModelBundle, cache: ArtifactCache, backend: str, preprocess: str
) -> Pipeline:
    feed = make_feed(preprocess, bundle.data_config)
    graph = preprocess if preprocess in BAKED else "model"
    return Pipeline(preprocess, create_runner(backend, bundle, cache, graph), feed)
