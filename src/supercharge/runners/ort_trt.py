"""ONNX Runtime on the TensorRT execution provider, CUDA EP behind it for what TensorRT rejects.

Engines are built in prepare() (warm-ups at every batch size and at the profile's smallest and
largest, against one explicit optimisation profile covering all of them), never in run():
place() refuses a shape outside the profile, which would otherwise make the EP rebuild the
engine inside a timed region. When ONNX Runtime splits a graph between TensorRT and the CUDA EP
(an op TensorRT rejects), the TensorRT part's inputs are inner tensors the explicit profile does
not name, and the EP refuses the session ("User needs to provide all the dynamic shape inputs
with associated profiles"); the runner then builds again without the explicit profile, and the
EP's implicit one spans the batch sizes the warm-ups showed it (the same 1..largest range).

Engines live in the artifact cache root, in a folder keyed by everything that makes an engine
non-portable: the model file, GPU name and compute capability, TensorRT and ONNX Runtime
versions, precision, profile shapes (or the implicit profile's range) and builder level. Old
engines are never reused by accident. The timing cache (TensorRT's measured kernel timings, by
layer) is shared by every engine built for one GPU and one set of versions: the model graph,
its preprocessing variants and each image size's engine have the same layers, so later builds
skip most of the kernel timing.

fp16 sets `trt_fp16_enable` (TensorRT picks fp16 kernels where it wants, fp32 elsewhere). An
fp32 engine would use TF32, TensorRT's default, unless NVIDIA_TF32_OVERRIDE=0: the pytest plugin
and the CLI set it at start (supercharge.gpu.forbid_tf32); describe() and the engine cache key
record the value in force, so a TF32 engine is never reused as a strict fp32 one.

Option names follow ONNX Runtime's TensorRT EP documentation: trt_fp16_enable,
trt_engine_cache_enable/_path, trt_timing_cache_enable/_path, trt_profile_{min,opt,max}_shapes
("input:1x3x224x224", several inputs comma-separated), trt_builder_optimization_level.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supercharge.errors import SuperchargeError, first_line
from supercharge.runners.ort_cuda import CUDA_PROVIDER, cuda_provider_options
from supercharge.runners.ort_runner import OrtRunner, ProviderError, Providers

if TYPE_CHECKING:
    from supercharge.cache import ArtifactCache

TRT_PROVIDER = "TensorrtExecutionProvider"
CACHE_KIND = "ort-trt"  # folder under the artifact cache root
PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class TrtProfile:
    """One TensorRT optimisation profile for one input: min/opt/max full shapes."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @classmethod
    def for_batches(
        cls,
        input_name: str,
        shape: Sequence[int],
        batch_sizes: Sequence[int],
        opt_batch: int | None = None,
        max_batch: int | None = None,
    ) -> TrtProfile:
        """The profile for inputs `(N, *shape)`, optimised for `opt_batch` (default: the largest
        of `batch_sizes`, which the engine then runs best). It runs batches from 1 (single
        images: predict, the accuracy gates) up to the largest of `batch_sizes` and `max_batch`
        (a batch that is run but not benchmarked, such as the gates' batch of every fixture
        image), so none of them makes the engine rebuild."""
        opt = max(batch_sizes) if opt_batch is None else opt_batch
        high = max(*batch_sizes, max_batch or 1)
        if not 1 <= opt <= high:
            raise SuperchargeError(
                f"opt_batch {opt} is outside the profile's batch sizes 1..{high}: "
                "pick one of batch_sizes"
            )
        rest = tuple(int(d) for d in shape)
        return cls(input_name, (1, *rest), (opt, *rest), (high, *rest))

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )

    def implicit(self) -> dict[str, str]:
        """What an implicit profile covers: the shapes the warm-ups run, batch min..max (the
        TensorRT EP sets min and max from the shapes it has seen, opt to the max)."""
        rest = "x".join(str(d) for d in self.min[1:])
        return {"implicit": f"{self.input_name}:{self.min[0]}..{self.max[0]}x{rest}"}

    def options(self) -> dict[str, str]:
        def fmt(dims: tuple[int, ...]) -> str:
            return f"{self.input_name}:{'x'.join(str(d) for d in dims)}"

        return {
            "trt_profile_min_shapes": fmt(self.min),
            "trt_profile_opt_shapes": fmt(self.opt),
            "trt_profile_max_shapes": fmt(self.max),
        }


def _gpu_keyed_dir(
    root: Path, gpu: Mapping[str, Any], versions: Mapping[str, Any], label: str, **inputs: Any
) -> Path:
    """`<root>/ort-trt/<label with the GPU and sm>-<key>`, the key a hash of the GPU, the
    versions and `inputs`: a folder that another GPU, TensorRT or ORT never shares."""
    keyed = {
        "gpu": gpu.get("gpu_name"),
        "compute_capability": gpu.get("compute_capability"),
        "versions": dict(versions),
        **inputs,
    }
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    name = str(gpu.get("gpu_name") or "gpu")
    cc = str(gpu.get("compute_capability") or "").replace(".", "")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label.format(gpu=f"{name}-sm{cc}"))
    return Path(root) / CACHE_KIND / f"{slug}-{key}"


def engine_cache_dir(
    root: Path,
    model_path: Path,
    gpu: Mapping[str, Any],
    versions: Mapping[str, Any],
    precision: str,
    profile: TrtProfile,
    builder_optimization_level: int | None = None,
    explicit_profile: bool = True,
) -> Path:
    """`<root>/ort-trt/<gpu>-sm<cc>-<precision>-<key>`: engines built for exactly these inputs.

    The model is identified by its artifact folder (content-keyed) and file name, so a new
    export, another GPU, another TensorRT or ORT, precision or profile gets its own folder.
    """
    from supercharge.gpu import tf32_override

    return _gpu_keyed_dir(
        root,
        gpu,
        versions,
        f"{{gpu}}-{precision}",
        model=f"{model_path.parent.name}/{model_path.name}",
        tf32_override=tf32_override() if precision == "fp32" else None,
        precision=precision,
        profile=profile.options() if explicit_profile else profile.implicit(),  # with shapes
        builder_optimization_level=builder_optimization_level,
    )


def timing_cache_dir(root: Path, gpu: Mapping[str, Any], versions: Mapping[str, Any]) -> Path:
    """`<root>/ort-trt/timing-<gpu>-sm<cc>-<key>`: one timing cache per GPU and versions.

    Timings are only valid for the GPU and TensorRT that measured them, so those key it; the
    model, precision and profile do not (entries are per layer configuration).
    """
    return _gpu_keyed_dir(root, gpu, versions, "timing-{gpu}")


def trt_provider_options(
    profile: TrtProfile | None,
    precision: str,
    cache_dir: Path,
    device_id: int = 0,
    builder_optimization_level: int | None = None,
    timing_dir: Path | None = None,
) -> dict[str, Any]:
    """TensorRT EP options: precision, the engine cache in `cache_dir`, the timing cache in
    `timing_dir` (default: beside the engines), the explicit profile (None: the EP's implicit
    one, which grows to the shapes it is run with)."""
    if precision not in PRECISIONS:
        raise SuperchargeError(
            f"ort-trt has no precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
        )
    options: dict[str, Any] = {
        "device_id": device_id,
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(Path(cache_dir) / "engines"),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing_dir or Path(cache_dir) / "timing"),
        **(profile.options() if profile is not None else {}),
    }
    if builder_optimization_level is not None:
        if not 0 <= builder_optimization_level <= 5:
            raise SuperchargeError(
                f"builder_optimization_level {builder_optimization_level} is not 0..5: "
                "TensorRT's default is 3"
            )
        options["trt_builder_optimization_level"] = builder_optimization_level
    return options


def trt_providers(
    profile: TrtProfile | None,
    precision: str,
    cache_dir: Path,
    device_id: int = 0,
    builder_optimization_level: int | None = None,
    timing_dir: Path | None = None,
) -> Providers:
    """TensorRT first (asserted), the CUDA EP after it for nodes TensorRT rejects (fp32, no
    TF32), as ONNX Runtime's documentation recommends."""
    return [
        (
            TRT_PROVIDER,
            trt_provider_options(
                profile, precision, cache_dir, device_id, builder_optimization_level, timing_dir
            ),
        ),
        (CUDA_PROVIDER, cuda_provider_options(device_id)),
    ]


def runtime_versions() -> dict[str, str | None]:
    import onnxruntime as ort

    from supercharge.gpu import tensorrt_version

    return {"tensorrt": tensorrt_version(), "onnxruntime": ort.__version__}


class OrtTrtRunner(OrtRunner):
    provider = TRT_PROVIDER

    def __init__(
        self,
        model_path: Path,
        *,
        cache: ArtifactCache,
        precision: str = "fp16",
        device_id: int = 0,
        io_binding: bool | None = None,
        batch_sizes: Sequence[int] = (1,),
        threads: int | None = None,
        input_shape: Sequence[int] | None = None,
        opt_batch: int | None = None,
        max_batch: int | None = None,
        builder_optimization_level: int | None = None,
        gpu: Mapping[str, Any] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise SuperchargeError(
                f"ort-trt has no precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        super().__init__(
            model_path,
            backend="ort-trt",
            precision=precision,
            device="cuda",
            device_id=device_id,
            io_binding=io_binding,
            batch_sizes=batch_sizes,
            threads=threads,
            input_shape=input_shape,
        )
        self.cache_root = Path(cache.root)
        self.opt_batch = opt_batch
        self.max_batch = max_batch
        self.builder_optimization_level = builder_optimization_level
        self._gpu = dict(gpu) if gpu is not None else None
        self._profile: TrtProfile | None = None
        self.explicit_profile = True  # False once the EP refused it for a split graph
        self.cache_dir: Path | None = None

    def profile(self) -> TrtProfile:
        if self._profile is None:
            self._profile = TrtProfile.for_batches(
                self.graph_input()[0],
                self.profile_shape(1)[1:],
                self.batch_sizes,
                self.opt_batch,
                self.max_batch,
            )
        return self._profile

    def providers(self) -> Providers:
        profile, versions = self.profile(), runtime_versions()
        self.cache_dir = self._engine_dir(self.explicit_profile, versions)
        return trt_providers(
            profile if self.explicit_profile else None,
            self.precision,
            self.cache_dir,
            self.device_id,
            self.builder_optimization_level,
            timing_cache_dir(self.cache_root, self._gpu, versions),
        )

    def _engine_dir(
        self, explicit_profile: bool, versions: Mapping[str, Any] | None = None
    ) -> Path:
        if self._gpu is None:
            from supercharge.gpu import gpu_info

            self._gpu = gpu_info()
        return engine_cache_dir(
            self.cache_root,
            self.model_path,
            self._gpu,
            versions if versions is not None else runtime_versions(),
            self.precision,
            self.profile(),
            self.builder_optimization_level,
            explicit_profile,
        )

    def warmup_batches(self) -> tuple[int, ...]:
        """The profile's largest and smallest batch, then every benchmarked one: an implicit
        profile covers only what the warm-ups ran, and an explicit one costs two runs more."""
        profile = self.profile()
        return tuple(dict.fromkeys((profile.max[0], profile.min[0], *self.batch_sizes)))

    def prepare(self) -> None:
        """Create the session and build (or load) the engine by the warm-ups, holding the
        timing cache's lock: a second process building on this GPU at the same time would skew
        TensorRT's kernel timings and race on the shared cache file. If the EP refuses the
        explicit profile because the graph is split (module docstring), build without it."""
        if self.session is not None:
            return
        from supercharge.gpu import load_tensorrt

        load_tensorrt()  # a pip TensorRT's libraries are off the loader's path otherwise
        refused = self._engine_dir(explicit_profile=False) / EXPLICIT_REFUSED
        if refused.is_file():  # an earlier run found this graph split: no second refusal
            self.explicit_profile = False
        try:
            self._build()
        except ProviderError as exc:
            if not self.explicit_profile or not _refused_for_split_graph(exc):
                raise
            self.explicit_profile = False
            self._build()
            # remembered beside the implicit engines (a read-only cache: found again next time)
            with suppress(OSError):
                refused.write_text(f"{_SPLIT_GRAPH_MESSAGE}: {first_line(exc.__cause__ or exc)}\n")

    def _build(self) -> None:
        from filelock import FileLock

        from supercharge.cache import folder_lock_path, mark_used

        options = dict(self.providers())[TRT_PROVIDER]
        paths = [Path(options[k]) for k in ("trt_engine_cache_path", "trt_timing_cache_path")]
        folders = [paths[0].parent, paths[1]]  # <root>/ort-trt/<slug>-<key>: what prune sees
        with ExitStack() as held:
            # Locked before they are created or used: `supercharge cache --prune` skips them.
            for folder in folders:
                lock = folder_lock_path(folder)
                if lock is None or folder.parent != self.cache_root / CACHE_KIND:
                    continue
                try:
                    held.enter_context(FileLock(str(lock), mode=0o666))
                except OSError as exc:
                    raise SuperchargeError(
                        f"cannot take lock file {lock} ({exc.strerror or exc}): fix its "
                        "permissions, or pass --artifact-dir (or set SUPERCHARGE_ARTIFACT_DIR) "
                        "to a writable cache"
                    ) from exc
            for path in paths:
                try:
                    path.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # a read-only shared cache: engines are built per machine
                    raise SuperchargeError(
                        f"cannot create the TensorRT cache folder {path} "
                        f"({exc.strerror or exc}): pass --artifact-dir (or set "
                        "SUPERCHARGE_ARTIFACT_DIR) to a writable cache"
                    ) from exc
            for folder in folders:
                mark_used(folder)
            with FileLock(str(paths[1] / ".build.lock")):
                super().prepare()

    def place(self, batch: Any) -> Any:
        shape, profile = tuple(batch.shape), self.profile()
        if not profile.covers(shape):
            raise SuperchargeError(
                f"input shape {shape} is outside the TensorRT profile "
                f"{profile.min}..{profile.max}: "
                "pass the batch sizes you run (batch_sizes, max_batch) to create_runner, so the "
                "engine is built in prepare() and not mid-benchmark"
            )
        return super().place(batch)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        profile = self.profile()
        info["trt_profile"] = profile.options() if self.explicit_profile else profile.implicit()
        info["engine_cache"] = str(self.cache_dir) if self.cache_dir else None
        if self.precision == "fp32":
            from supercharge.gpu import tf32_override

            info["tf32"] = (
                "off (NVIDIA_TF32_OVERRIDE=0)"
                if tf32_override() == "0"
                else "allowed (TensorRT default; NVIDIA_TF32_OVERRIDE=0 forbids it)"
            )
        info.update({k: v for k, v in runtime_versions().items() if k == "tensorrt"})
        return info


# Beside the implicit-profile engines of a graph the EP refused an explicit profile for.
EXPLICIT_REFUSED = "explicit-profile-refused"

# The TensorRT EP's refusal of an explicit profile that leaves a TensorRT subgraph's dynamic
# input without shapes (onnxruntime tensorrt_execution_provider.cc).
_SPLIT_GRAPH_MESSAGE = "provide all the dynamic shape inputs with associated profiles"


def _refused_for_split_graph(exc: BaseException) -> bool:
    """Whether session creation failed because the explicit profile does not name an input of
    a TensorRT subgraph (ORT's exception is the ProviderError's cause)."""
    return any(_SPLIT_GRAPH_MESSAGE in str(e) for e in (exc, exc.__cause__) if e is not None)
