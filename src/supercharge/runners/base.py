"""The runner interface and the backend registry.

Like Polygraphy's runners: `prepare()` does the one-off work (session creation, weight transfer),
`run()` maps a float32 NCHW host batch to host logits and is the only thing a benchmark times, and
`describe()` reports what actually ran (device, providers) so nobody trusts a silent fallback.
Backends are looked up by name; heavy runtimes are imported only when a runner is created.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
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
        """float32 [N, 3, H, W] on the host -> float32 logits [N, classes] on the host."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What actually ran: backend, device, providers in use, ... (after prepare)."""


RunnerFactory = Callable[["ModelBundle", "ArtifactCache"], Runner]


def _torch_cpu(bundle: ModelBundle, cache: ArtifactCache) -> Runner:
    from supercharge.runners.torch_runner import TorchRunner

    return TorchRunner(bundle, device="cpu")


def _ort_cpu(bundle: ModelBundle, cache: ArtifactCache) -> Runner:
    from supercharge.export import MODEL_FILE, export_onnx
    from supercharge.runners.ort_runner import OrtRunner

    onnx_path = export_onnx(bundle, cache).file(MODEL_FILE)
    return OrtRunner(onnx_path, provider="CPUExecutionProvider")


BACKENDS: dict[str, RunnerFactory] = {
    "torch-cpu": _torch_cpu,
    "ort-cpu": _ort_cpu,
}


def create_runner(backend: str, bundle: ModelBundle, cache: ArtifactCache) -> Runner:
    """Build and prepare the runner registered as `backend`."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise SuperchargeError(
            f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}"
        ) from None
    runner = factory(bundle, cache)
    runner.prepare()
    return runner
