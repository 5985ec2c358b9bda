"""ONNX Runtime runner with a provider check: a requested EP that is not in use is an error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from supercharge.errors import SuperchargeError
from supercharge.runners.base import Runner


class ProviderError(SuperchargeError):
    """ONNX Runtime did not use the execution provider that was asked for."""


def cpu_session_options(threads: int | None = None) -> Any:
    """Tuned CPU options: full graph optimisation, one intra-op thread per core, no spinning.

    Spinning threads keep burning the cores after each run and slow whatever runs next in the
    process (measured in GUIDE.md), so it is off.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def ensure_provider(session: Any, requested: str) -> None:
    """Fail unless `requested` is the first provider the session actually uses."""
    in_use = session.get_providers()
    if not in_use or in_use[0] != requested:
        raise ProviderError(
            f"ONNX Runtime is not using {requested} (in use: {', '.join(in_use) or 'none'}): "
            "install the matching onnxruntime package and its libraries, or pick another backend"
        )


class OrtRunner(Runner):
    def __init__(self, model_path: Path, provider: str = "CPUExecutionProvider") -> None:
        self.model_path = Path(model_path)
        self.provider = provider
        self.backend = {"CPUExecutionProvider": "ort-cpu"}.get(provider, provider)
        self.session: Any = None

    def prepare(self) -> None:
        if self.session is not None:
            return
        import onnxruntime as ort

        session = ort.InferenceSession(
            str(self.model_path), sess_options=cpu_session_options(), providers=[self.provider]
        )
        ensure_provider(session, self.provider)
        self.session = session
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: np.ascontiguousarray(batch)})[0]

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.backend,
            "device": "cpu" if self.provider == "CPUExecutionProvider" else "cuda",
            "providers": list(self.session.get_providers()) if self.session else [],
            "onnxruntime": ort.__version__,
            "model": str(self.model_path),
        }
