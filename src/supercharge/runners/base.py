"""The runner interface and the backend registry.

Like Polygraphy's runners: `prepare()` does the one-off work (session creation, weight transfer),
`run()` maps a float32 NCHW host batch to host logits and is the only thing a benchmark times, and
`describe()` reports what actually ran (device, providers) so nobody trusts a silent fallback.
Backends are looked up by name; heavy runtimes are imported only when a runner is created.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from supercharge.errors import SuperchargeError

if TYPE_CHECKING:
    from supercharge.cache import ArtifactCache
    from supercharge.models import ModelBundle


class Runner(ABC):
    backend: str

    @abstractmethod
    def prepare(self) -> None:
        """One-off setup; never inside a timed region. Idempotent."""

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """The graph's input batch on the host (float32 NCHW for a plain model, uint8 NHWC
        for a baked one) -> float32 logits [N, classes] on the host."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What actually ran: backend, device, providers in use, ... (after prepare)."""


# (bundle, cache, graph) -> runner; graph names the ONNX graph to run: "model" is the plain
# export, "baked" / "seed" the model merged with a preprocessing graph (preprocess/merge.py).
RunnerFactory = Callable[["ModelBundle", "ArtifactCache", str], Runner]


def _torch_cpu(bundle: ModelBundle, cache: ArtifactCache, graph: str) -> Runner:
    from supercharge.runners.torch_runner import TorchRunner

    if graph != "model":
        raise SuperchargeError(
            f"preprocessing {graph!r} is baked into an ONNX graph: use an ONNX Runtime backend"
        )
    return TorchRunner(bundle, device="cpu")


def onnx_graph_path(bundle: ModelBundle, cache: ArtifactCache, graph: str) -> Path:
    """The cached ONNX file for `graph`: the plain export or a merged preprocessing variant."""
    from supercharge.export import MODEL_FILE, export_onnx

    if graph == "model":
        return export_onnx(bundle, cache).file(MODEL_FILE)
    from supercharge.preprocess.merge import merged_model

    return merged_model(bundle, cache, graph).file(MODEL_FILE)


def _ort_cpu(bundle: ModelBundle, cache: ArtifactCache, graph: str) -> Runner:
    from supercharge.runners.ort_runner import OrtRunner

    return OrtRunner(onnx_graph_path(bundle, cache, graph), provider="CPUExecutionProvider")


BACKENDS: dict[str, RunnerFactory] = {
    "torch-cpu": _torch_cpu,
    "ort-cpu": _ort_cpu,
}


def create_runner(
    backend: str, bundle: ModelBundle, cache: ArtifactCache, graph: str = "model"
) -> Runner:
    """Build and prepare the runner registered as `backend`, running `graph`."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise SuperchargeError(
            f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}"
        ) from None
    runner = factory(bundle, cache, graph)
    runner.prepare()
    return runner
