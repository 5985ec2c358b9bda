"""The runner interface and the backend registry.

Like Polygraphy's runners: `prepare()` does the one-off work (session creation, engine builds,
compilation, weight transfer), `run()` maps a host batch to host logits, and `describe()` reports
what actually ran (device, providers, node placement) so nobody trusts a silent fallback.
`run()` is split into `place()` (host batch -> where the runtime wants it), `run_placed()` (the
model alone, device synchronised) and `to_host()`, so a benchmark can time the model without
transfers and end to end with them.

Backends are looked up by name in BACKENDS, a data table that also says which precisions and
keyword options each one accepts; heavy runtimes are imported only when a runner is created.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from supercharge.errors import SuperchargeError

if TYPE_CHECKING:
    from supercharge.cache import ArtifactCache
    from supercharge.models import ModelBundle


class BackendUnavailableError(SuperchargeError):
    """The backend needs hardware or packages this machine does not have."""


class Runner(ABC):
    backend: str
    precision: str = "fp32"
    device: str = "cpu"

    @abstractmethod
    def prepare(self) -> None:
        """One-off setup (sessions, engines, compilation, warm-up); never timed. Idempotent."""

    def place(self, batch: Any) -> Any:
        """Put a batch where the runtime reads it: a host array, or a device array exposing
        DLPack (cupy) that GPU runners take without a host round trip. Host runtimes take the
        array as is."""
        return np.ascontiguousarray(batch)

    @abstractmethod
    def run_placed(self, placed: Any) -> Any:
        """The model alone on a placed batch; device work is finished when this returns."""

    def to_host(self, out: Any) -> np.ndarray:
        """The output of run_placed() as float32 host logits [N, classes]."""
        return np.asarray(out, dtype=np.float32)

    def prepare_input(self, batch: Any) -> None:
        """One-off work a batch like this one needs before it can be timed (nothing, except
        for graphs built per image size: runners.per_size)."""
        return None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The graph's input batch on the host (float32 NCHW for a plain model, uint8 NHWC
        for a baked one) -> float32 logits [N, classes] on the host."""
        return self.to_host(self.run_placed(self.place(batch)))

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What actually ran (JSON-able): backend, precision, device, providers, ..."""


# (bundle, cache, graph, precision, **options) -> unprepared runner. `graph` names the ONNX graph
# to run: "model" is the plain export, "baked" / "seed" / "separable" the model merged with a
# preprocessing graph ("separable" is built per image size: options then carry image_size).
RunnerFactory = Callable[..., Runner]


@dataclass(frozen=True)
class BackendSpec:
    """One registry row: what a backend runs on and which precisions and options it takes."""

    name: str
    device: str  # "cpu" or "cuda"
    precisions: tuple[str, ...]
    options: tuple[str, ...]  # keyword options create_runner passes on
    factory: RunnerFactory
    onnx: bool  # runs ONNX graphs (so baked preprocessing graphs too)
    # Graphs this backend runs as one session per image size. The separable graph is built per
    # size; TensorRT also needs it for graphs that take any size ("baked", "seed"): an engine
    # holds every input shape inside its profile, and the baked graph's band spans (so the
    # shapes inside it) follow the image size, so one static engine per size is the one that
    # never rebuilds inside a timed region.
    per_size_graphs: tuple[str, ...] = ("separable",)


GRAPHS = ("model", "baked", "seed", "separable")
_IMAGE_LAYOUTS = {"separable": "NHWC", "baked": "NHWC", "seed": "NCHW"}


def onnx_graph_path(
    bundle: ModelBundle,
    cache: ArtifactCache,
    graph: str = "model",
    precision: str = "fp32",
    calibration: Any = None,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """The cached ONNX file for `graph` at `precision`.

    graph: "model" (the plain export) or "baked" / "seed" / "separable" (a preprocessing graph
    merged in front; "separable" is for one image_size=(h, w)).
    precision "int8" swaps the fp32 export for its static QDQ quantisation (runners.quantize),
    also under a baked graph; every other precision runs the fp32 export (TensorRT lowers it).
    """
    from supercharge.export import MODEL_FILE, export_onnx

    if graph not in GRAPHS:
        raise SuperchargeError(f"unknown graph {graph!r}: choose one of {', '.join(GRAPHS)}")
    if precision == "int8":
        from supercharge.runners.quantize import quantized_model

        source = quantized_model(bundle, cache, calibration=calibration)
    else:
        source = export_onnx(bundle, cache)
    if graph == "model":
        return source.file(MODEL_FILE)
    from supercharge.preprocess.merge import merged_model

    return merged_model(bundle, cache, graph, image_size=image_size, onnx_artifact=source).file(
        MODEL_FILE
    )


def default_input_shape(
    bundle: ModelBundle, graph: str, image_size: tuple[int, int] | None = None
) -> tuple[int, ...] | None:
    """Non-batch input dims for warm-up and TensorRT profiles when the graph leaves them open.

    The plain export fixes C, H, W; a baked graph takes any image size, so warm-ups use an image
    of the model's own input size (uint8 NHWC for "baked", float NCHW for "seed") unless an
    image_size is given (a separable graph's one size, or the size a per-size runner serves).
    """
    channels, height, width = bundle.input_size
    if image_size is not None and graph in _IMAGE_LAYOUTS:
        if _IMAGE_LAYOUTS[graph] == "NCHW":
            return (channels, *image_size)
        return (*image_size, channels)
    if graph == "baked":
        return (height, width, channels)
    if graph == "seed":
        return (channels, height, width)
    return None


def _graph_file(
    bundle: ModelBundle,
    cache: ArtifactCache,
    graph: str,
    precision: str,
    options: dict[str, Any],
    calibration: Any = None,
) -> Path:
    """The ONNX file an ORT runner loads, taking `image_size` (per-size runners) out of
    `options` and filling in the `input_shape` warm-ups and profiles need. Only the separable
    graph is a file per size; a baked graph serves every size from one file."""
    size = options.pop("image_size", None)
    options.setdefault("input_shape", default_input_shape(bundle, graph, size))
    file_size = size if graph == "separable" else None
    return onnx_graph_path(bundle, cache, graph, precision, calibration, file_size)


def _cuda_required(backend: str) -> None:
    from supercharge.gpu import backend_unavailable_reason

    reason = backend_unavailable_reason(backend)
    if reason is not None:
        raise BackendUnavailableError(f"backend {backend!r} cannot run here: {reason}")


def _torch(device: str) -> RunnerFactory:
    def factory(
        bundle: ModelBundle, cache: ArtifactCache, graph: str, precision: str, **options: Any
    ) -> Runner:
        from supercharge.runners.torch_runner import TorchRunner

        if device == "cuda":
            _cuda_required("torch-cuda")
        return TorchRunner(bundle, device=device, precision=precision, **options)

    return factory


def _ort_cpu(
    bundle: ModelBundle, cache: ArtifactCache, graph: str, precision: str, **options: Any
) -> Runner:
    from supercharge.runners.ort_runner import OrtRunner

    path = _graph_file(bundle, cache, graph, precision, options, options.pop("calibration", None))
    # a baked graph runs back to back with nothing on the host between: spinning pays there
    options.setdefault("spinning", graph != "model")
    return OrtRunner(path, backend="ort-cpu", precision=precision, **options)


def _ort_cuda(
    bundle: ModelBundle, cache: ArtifactCache, graph: str, precision: str, **options: Any
) -> Runner:
    from supercharge.runners.ort_cuda import OrtCudaRunner

    _cuda_required("ort-cuda")
    path = _graph_file(bundle, cache, graph, precision, options)
    return OrtCudaRunner(path, precision=precision, **options)


def _ort_trt(
    bundle: ModelBundle, cache: ArtifactCache, graph: str, precision: str, **options: Any
) -> Runner:
    from supercharge.runners.ort_trt import OrtTrtRunner

    _cuda_required("ort-trt")
    if graph == "baked" and options.get("image_size") is not None:
        # One engine per image size anyway (per_size_graphs), so the size's separable graph:
        # bit-identical on every size (tests/test_preprocess_onnx.py), with Pillow's weights as
        # float32 constants. The baked graph computes them in float64, which TensorRT does not
        # have (it casts down), times 2**22, past fp16's 65504 in an fp16 engine.
        graph = "separable"
    path = _graph_file(bundle, cache, graph, "fp32", options)  # TensorRT builds fp16 itself
    return OrtTrtRunner(path, cache=cache, precision=precision, **options)


_TORCH_OPTIONS = ("channels_last", "compile", "batch_sizes")
_ORT_OPTIONS = ("io_binding", "batch_sizes", "threads", "input_shape")
_TRT_OPTIONS = ("builder_optimization_level", "opt_batch", "max_batch")
_GPU_ORT_OPTIONS = (*_ORT_OPTIONS, "device_id")

BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("torch-cpu", "cpu", ("fp32", "bf16"), _TORCH_OPTIONS, _torch("cpu"), False),
        BackendSpec(
            "torch-cuda", "cuda", ("fp32", "fp16", "bf16"), _TORCH_OPTIONS, _torch("cuda"), False
        ),
        BackendSpec(
            "ort-cpu",
            "cpu",
            ("fp32", "int8"),
            (*_ORT_OPTIONS, "calibration", "spinning"),
            _ort_cpu,
            True,
        ),
        BackendSpec(
            "ort-cuda", "cuda", ("fp32",), (*_GPU_ORT_OPTIONS, "cuda_graph"), _ort_cuda, True
        ),
        BackendSpec(
            "ort-trt",
            "cuda",
            ("fp16", "fp32"),
            (*_GPU_ORT_OPTIONS, *_TRT_OPTIONS),
            _ort_trt,
            True,
            per_size_graphs=("separable", "baked", "seed"),
        ),
    )
}


def backend_spec(backend: str) -> BackendSpec:
    """The registry row for `backend`, or a one-line error listing the known backends."""
    try:
        return BACKENDS[backend]
    except KeyError:
        raise SuperchargeError(
            f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}"
        ) from None


def largest_batch_options(backend: str, largest: int) -> dict[str, Any]:
    """`{"max_batch": largest}` for a backend that must know its largest batch before its first
    run (TensorRT's profile), else `{}`: for callers that run a batch they do not benchmark."""
    return {"max_batch": largest} if "max_batch" in backend_spec(backend).options else {}


def grid_options(
    backend: str, preprocess: str, largest: int, cuda_graph: bool = False
) -> dict[str, Any]:
    """The keywords the grid gives `backend` beyond its batch sizes: TensorRT's largest batch
    (largest_batch_options), and with `cuda_graph` CUDA graphs for ort-cuda where its graph
    allows them: the plain model graph. The merged preprocessing graphs keep shape nodes on the
    CPU, and ORT refuses to capture a graph that is not all on the CUDA EP."""
    from supercharge.pipeline import BAKED

    options = largest_batch_options(backend, largest)
    if cuda_graph and backend == "ort-cuda" and preprocess not in BAKED:
        options["cuda_graph"] = True
    return options


def supported(backend: str) -> tuple[str, ...]:
    """The precisions `backend` runs, its default first."""
    return backend_spec(backend).precisions


def backend_grid() -> list[tuple[str, str]]:
    """Every valid (backend, precision) pair, for a benchmark grid to enumerate."""
    return [(name, p) for name, spec in BACKENDS.items() for p in spec.precisions]


def check_combination(backend: str, precision: str, graph: str = "model") -> BackendSpec:
    """Refuse a precision or graph the backend cannot run, before anything is built."""
    spec = backend_spec(backend)
    if graph not in GRAPHS:
        raise SuperchargeError(f"unknown graph {graph!r}: choose one of {', '.join(GRAPHS)}")
    if precision not in spec.precisions:
        raise SuperchargeError(
            f"backend {backend!r} does not run precision {precision!r}: "
            f"choose one of {', '.join(spec.precisions)}"
        )
    if graph != "model" and not spec.onnx:
        raise SuperchargeError(
            f"preprocessing {graph!r} is baked into an ONNX graph: use an ONNX Runtime backend"
        )
    return spec


def create_runner(
    backend: str,
    bundle: ModelBundle,
    cache: ArtifactCache,
    graph: str = "model",
    precision: str = "fp32",
    **options: Any,
) -> Runner:
    """Build and prepare the runner registered as `backend`, running `graph` at `precision`.

    `options` are backend keywords (BACKENDS[backend].options), e.g. channels_last=True for
    torch, io_binding=True for ORT, batch_sizes=(1, 8) for warm-ups and TensorRT profiles.
    """
    spec = check_combination(backend, precision, graph)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise SuperchargeError(
            f"backend {backend!r} has no option {', '.join(unknown)}: "
            f"its options are {', '.join(spec.options)}"
        )
    if graph in spec.per_size_graphs:  # one session per image size, made when a size arrives
        from supercharge.runners.per_size import PerSizeRunner

        def make(size: tuple[int, int]) -> Runner:
            return spec.factory(bundle, cache, graph, precision, image_size=size, **options)

        return PerSizeRunner(make, backend, precision, spec.device, layout=_IMAGE_LAYOUTS[graph])
    runner = spec.factory(bundle, cache, graph, precision, **options)
    runner.prepare()
    return runner
