"""ONNX Runtime runners: the session, provider and binding helpers every ORT backend shares.

`OrtRunner` owns what is common to ort-cpu, ort-cuda and ort-trt: session creation with the
fallback switched off and the provider asserted (a requested EP that is not in use is an error,
never a slow CPU run), a one-off profiled run in prepare() that records where the optimised graph's
nodes actually ran, warm-up runs per batch size, and two ways to feed the session: `session.run`
with host arrays, or IOBinding with inputs and outputs on `device` ("cpu" or "cuda"), optionally
into fixed-address buffers for CUDA graphs. Subclasses only choose providers and device.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from supercharge.errors import SuperchargeError, first_line
from supercharge.runners.base import Runner

Providers = list[tuple[str, dict[str, Any]]]

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int64)": np.int64,
}


class ProviderError(SuperchargeError):
    """ONNX Runtime did not use the execution provider that was asked for."""


def cores() -> int:
    """The cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options(
    threads: int | None = None, profile_prefix: str | None = None, spinning: bool = False
) -> Any:
    """Tuned options: full graph optimisation, one intra-op thread per core, spinning as asked.

    Spinning intra-op threads keep burning the cores for a while after each run: that steals
    them from host work between runs (PIL or numpy preprocessing) but saves the wake-up when run
    follows run. Measured (lite0, 2 cores, bs1, docs/results/ort-cpu-spinning.md): preprocessing
    on the host between runs 6.2-7.6 ms without spinning, 8.0 ms with it; baked preprocessing,
    run after run, 4.8-6.3 ms without, 4.0-4.3 ms with. Hence off by default and on for baked
    graphs (runners.base). With `profile_prefix` the session profiles its runs until
    end_profiling(), which is how node placement is read (see profiled_placement).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or cores()
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Lets assigned_nodes() read which ONNX nodes each EP took (ORT >= 1.32; ignored before).
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def cpu_session_options(threads: int | None = None) -> Any:
    """The tuned CPU options without profiling (kept for existing callers)."""
    return session_options(threads)


def ensure_provider(session: Any, requested: str) -> None:
    """Fail unless `requested` is the first provider the session actually uses."""
    in_use = session.get_providers()
    if not in_use or in_use[0] != requested:
        from supercharge.gpu import provider_unavailable_reason

        fix = provider_unavailable_reason(requested) or (
            f"{requested} is installed but did not load (ONNX Runtime's log names the missing "
            "CUDA/cuDNN/TensorRT library): install it, or pick another backend"
        )
        raise ProviderError(
            f"ONNX Runtime is not using {requested} (in use: {', '.join(in_use) or 'none'}): {fix}"
        )


def ensure_placed(placement: dict[str, int], requested: str, model_path: Path) -> None:
    """Fail when `requested` is in use but ran none of the graph's nodes.

    ONNX Runtime lists a registered EP first even when it supported nothing in the graph (a
    TensorRT EP that rejects every node leaves the graph to the CUDA EP behind it), so the
    provider list alone would label CUDA EP timings "ort-trt". An empty placement (ORT could not
    say) is not judged; describe() shows it as {}.
    """
    if placement and placement.get(requested, 0) == 0:
        ran = ", ".join(f"{ep} {n}" for ep, n in sorted(placement.items()))
        raise ProviderError(
            f"{requested} is registered but ran none of {model_path.name}'s nodes ({ran}): "
            "it supports nothing in this graph; pick the backend that ran them"
        )


def create_session(model_path: Path, providers: Providers, options: Any) -> Any:
    """An InferenceSession on exactly `providers`: no silent fallback to the CPU EP."""
    import onnxruntime as ort

    requested = providers[0][0]
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=providers, enable_fallback=0
        )
    except Exception as exc:  # ORT raises its own pybind exception types
        reason = first_line(exc)
        if "graph capture" in reason:  # CUDA graphs need every node on the CUDA EP
            fix = "run without cuda_graph (a graph with nodes on other providers cannot use it)"
        else:
            fix = (
                "check the provider's libraries (supercharge.gpu.provider_unavailable_reason) "
                "or pick another backend"
            )
        raise ProviderError(
            f"ONNX Runtime cannot load {model_path} with {requested} ({reason}): {fix}"
        ) from exc
    session.disable_fallback()  # also where the enable_fallback keyword is not read
    ensure_provider(session, requested)
    return session


def profiled_placement(session: Any) -> dict[str, int]:
    """{provider: node count} of the optimised graph, from the profile of the runs so far.

    Ends profiling (later runs are not profiled) and deletes the profile file. Each kernel that
    ran is one "Node" event whose args name its provider; a TensorRT engine counts as one node.
    """
    path = session.end_profiling()
    if not path:
        return {}
    try:
        events = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    nodes = {
        (e["name"], e["args"]["provider"])
        for e in events
        if e.get("cat") == "Node"
        and str(e.get("name", "")).endswith("_kernel_time")
        and "provider" in e.get("args", {})
    }
    return dict(Counter(provider for _, provider in nodes))


def assigned_nodes(session: Any) -> dict[str, int]:
    """{provider: ONNX node count} as partitioned before fusion, where ORT can report it."""
    getter = getattr(session, "get_provider_graph_assignment_info", None)
    if getter is None:
        return {}
    try:
        subgraphs = getter()
    except Exception:  # recording was not enabled, or the build lacks it
        return {}
    counts: Counter[str] = Counter()
    for sub in subgraphs:
        counts[sub.ep_name] += len(sub.get_nodes())
    return dict(counts)


def to_host_array(x: Any) -> np.ndarray:
    """A host numpy array from numpy, cupy (.get()) or an OrtValue (.numpy())."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and hasattr(x, "__dlpack__"):  # cupy
        return x.get()
    if hasattr(x, "numpy"):  # OrtValue, torch tensor
        return np.asarray(x.numpy())
    return np.asarray(x)


def to_ortvalue(x: Any, device: str, device_id: int = 0) -> Any:
    """An OrtValue on `device`, the batch copied there through the host. CUDA arrays (cupy)
    are not wrapped here but bound by address (cuda_array_binding)."""
    import onnxruntime as ort

    if isinstance(x, ort.OrtValue):
        return x
    host = np.ascontiguousarray(to_host_array(x))
    return ort.OrtValue.ortvalue_from_numpy(host, device, device_id)


def cuda_array_binding(x: Any) -> tuple[np.dtype, list[int], int]:
    """(element type, shape, device address) of a C-contiguous CUDA array (cupy, torch), read
    from its __cuda_array_interface__, for IOBinding.bind_input(..., buffer_ptr=address).

    ONNX Runtime documents binding device memory by pointer (IOBinding.bind_input with
    element_type, shape, buffer_ptr); the public OrtValue.from_dlpack only exists in recent
    releases, so the pointer is what works on every onnxruntime-gpu this project supports.
    """
    cai = x.__cuda_array_interface__
    dtype, shape = np.dtype(cai["typestr"]), [int(d) for d in cai["shape"]]
    strides = cai.get("strides")  # None means C-contiguous
    if strides is not None and 0 not in shape:
        expected, step = [], dtype.itemsize
        for d in reversed(shape):
            expected.append(step)
            step *= d
        # A dim of size 1 may carry any stride; every other one must be C order.
        if any(s != e for d, s, e in zip(shape, strides, expected[::-1], strict=True) if d > 1):
            raise SuperchargeError(
                f"a CUDA batch with strides {tuple(strides)} is not C-contiguous: "
                "make it contiguous (cupy.ascontiguousarray) before binding it"
            )
    return dtype, shape, int(cai["data"][0])


def import_cupy(why: str) -> Any:
    """cupy, or a one-line error saying what needed it and how to get it."""
    try:
        import cupy
    except ImportError:
        raise SuperchargeError(
            f"{why} needs cupy and a CUDA GPU: pip install 'supercharge-timm[gpu]' (cupy-cuda13x)"
        ) from None
    return cupy


@dataclass
class _GraphSlot:
    """Fixed-address input/output buffers for one input shape: a CUDA graph replays these."""

    binding: Any
    input: Any  # cupy array whose address the captured graph reads
    output: Any  # cupy array the captured graph writes
    run_options: Any


class OrtRunner(Runner):
    """One ONNX Runtime session; the CPU EP unless a subclass supplies other providers."""

    provider = "CPUExecutionProvider"

    def __init__(
        self,
        model_path: Path,
        *,
        backend: str = "ort-cpu",
        precision: str = "fp32",
        providers: Providers | None = None,
        device: str = "cpu",
        device_id: int = 0,
        io_binding: bool | None = None,
        cuda_graph: bool = False,
        batch_sizes: Sequence[int] = (1,),
        threads: int | None = None,
        input_shape: Sequence[int] | None = None,
        spinning: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.backend = backend
        self.precision = precision
        self._providers = providers
        self.device = device
        self.device_id = device_id
        if cuda_graph and device == "cpu":
            raise SuperchargeError("cuda_graph=True needs a CUDA device: use backend 'ort-cuda'")
        if cuda_graph and io_binding is False:
            raise SuperchargeError(
                "cuda_graph=True replays fixed device buffers: it needs io_binding, drop "
                "io_binding=False"
            )
        # Device runners bind by default (no host round trip); io_binding=False measures one.
        self.io_binding = (device != "cpu" or cuda_graph) if io_binding is None else io_binding
        self.cuda_graph = cuda_graph
        self.batch_sizes = _check_batch_sizes(batch_sizes)
        self.threads = threads
        self.spinning = spinning
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape else None
        self.session: Any = None
        self.node_placement: dict[str, int] = {}
        self._slots: dict[tuple[int, ...], _GraphSlot] = {}
        self._graph_input: tuple[str, list[Any]] | None = None

    # -- what subclasses choose -----------------------------------------------------------------

    def providers(self) -> Providers:
        """The provider list, first one required; subclasses build theirs (options, cache dirs)."""
        return self._providers or [(self.provider, {})]

    def warmup_batches(self) -> tuple[int, ...]:
        """The batch sizes prepare() runs before any timing (placement is read on the first)."""
        return self.batch_sizes

    @property
    def warmup_runs(self) -> int:
        # ORT captures a CUDA graph after a couple of ordinary runs; plain sessions need one.
        return 3 if self.cuda_graph else 1

    # -- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.session is not None:
            return
        providers = self.providers()
        self.provider = providers[0][0]
        # Profiling a run that is being captured into a CUDA graph is not something to rely on:
        # with cuda_graph, placement comes from the partitioning record instead.
        profile = not self.cuda_graph
        with tempfile.TemporaryDirectory(prefix="supercharge-ort-profile-") as profile_dir:
            prefix = str(Path(profile_dir) / "ort") if profile else None
            session = create_session(
                self.model_path, providers, session_options(self.threads, prefix, self.spinning)
            )
            inp, out = session.get_inputs()[0], session.get_outputs()[0]
            self._input, self._output = inp.name, out.name
            self._input_type = _NUMPY_TYPES.get(inp.type, np.float32)
            self._binding = session.io_binding() if self.io_binding else None
            self.session = session
            try:
                # Engine builds, cuDNN autotuning and graph capture all happen here, never timed.
                for i, n in enumerate(self.warmup_batches()):
                    sample = np.zeros(self.profile_shape(n), dtype=self._input_type)
                    for _ in range(self.warmup_runs):
                        self.run(sample)
                    if i == 0 and profile:
                        self.node_placement = profiled_placement(session)
            except BaseException:
                self.session, self._slots = None, {}
                raise
        if not self.node_placement:
            self.node_placement = assigned_nodes(session)
        try:
            ensure_placed(self.node_placement, self.provider, self.model_path)
        except ProviderError:
            self.session, self._slots = None, {}
            raise

    def graph_input(self) -> tuple[str, list[Any]]:
        """The graph's input name and dims (ints, or names for dynamic ones), read from the file
        before any session exists (TensorRT needs its profile to create one)."""
        if self._graph_input is None:
            import onnx

            model = onnx.load(str(self.model_path), load_external_data=False)
            initializers = {t.name for t in model.graph.initializer}
            first = next(v for v in model.graph.input if v.name not in initializers)
            dims = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in first.type.tensor_type.shape.dim
            ]
            self._graph_input = (first.name, dims)
        return self._graph_input

    def profile_shape(self, batch: int) -> tuple[int, ...]:
        """The full input shape for `batch`: the graph's static dims, else `input_shape`."""
        dims = self.graph_input()[1]
        rest = list(dims[1:])
        if self.input_shape is not None:
            fixed = [(d, s) for d, s in zip(rest, self.input_shape, strict=False) if _static(d)]
            if len(self.input_shape) != len(rest) or any(d != s for d, s in fixed):
                raise SuperchargeError(
                    f"input_shape {self.input_shape} does not fit {self.model_path.name}'s input "
                    f"{dims}: give the {len(rest)} non-batch dims"
                )
            rest = list(self.input_shape)
        if not all(_static(d) for d in rest):
            raise SuperchargeError(
                f"{self.model_path} has dynamic input dims {dims}: "
                "pass input_shape=(the non-batch dims) to the runner"
            )
        return (batch, *rest)

    # -- running --------------------------------------------------------------------------------

    def _check_dtype(self, batch: Any) -> None:
        try:
            dtype = np.dtype(batch.dtype)
        except (AttributeError, TypeError):
            return  # not an array ORT can check here; it will say so itself
        if dtype != np.dtype(self._input_type):
            raise SuperchargeError(
                f"{self.model_path.name} takes {np.dtype(self._input_type)} input, got {dtype}: "
                "feed it through its pipeline's preprocessing (supercharge.pipeline)"
            )

    def place(self, batch: Any) -> Any:
        self._check_dtype(batch)
        if not self.io_binding:
            return np.ascontiguousarray(to_host_array(batch))  # session.run reads host memory
        if self.cuda_graph:
            return self._device_array(batch)
        if self.device != "cpu" and hasattr(batch, "__cuda_array_interface__"):
            if not getattr(getattr(batch, "flags", None), "c_contiguous", True):
                batch = import_cupy("a device batch").ascontiguousarray(batch)
            _synchronize_cupy()  # the producer's kernels finish before ORT's stream reads it
            return batch  # bound by address in run_placed: no copy
        return to_ortvalue(batch, self.device, self.device_id)

    def run_placed(self, placed: Any) -> Any:
        if not self.io_binding:
            return self.session.run([self._output], {self._input: placed})[0]
        if self.cuda_graph:
            slot = self._slot(tuple(placed.shape))
            slot.input[...] = placed  # device to device, into the captured address
            _synchronize_cupy()
            binding, run_options = slot.binding, slot.run_options
        else:
            slot, binding, run_options = None, self._binding, None
            if hasattr(placed, "__cuda_array_interface__"):
                dtype, shape, address = cuda_array_binding(placed)
                binding.bind_input(self._input, self.device, self.device_id, dtype, shape, address)
            else:
                binding.bind_ortvalue_input(self._input, placed)
            binding.bind_output(self._output, self.device, self.device_id)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding, run_options)
        binding.synchronize_outputs()  # the device is done: timings stay honest
        if slot is not None:
            result = slot.output.copy()  # the next replay overwrites the fixed buffer
            _synchronize_cupy()
            return result
        return binding.get_outputs()[0]

    def to_host(self, out: Any) -> np.ndarray:
        if isinstance(out, np.ndarray):
            return out.astype(np.float32, copy=False)
        # Device outputs are copied; CPU ones may alias a buffer the next run reuses.
        return np.array(to_host_array(out), dtype=np.float32, copy=True)

    def _device_array(self, batch: Any) -> Any:
        """The batch as a contiguous cupy array on this runner's GPU (copied in if on the host)."""
        cp = import_cupy("cuda_graph=True")
        with cp.cuda.Device(self.device_id):
            array = cp.ascontiguousarray(cp.asarray(batch))
        _synchronize_cupy()
        return array

    def _slot(self, shape: tuple[int, ...]) -> _GraphSlot:
        """The fixed buffers and binding for `shape`: one captured CUDA graph per input shape."""
        slot = self._slots.get(shape)
        if slot is None:
            # gpu_graph_id 0 is ORT's default, reserved for internal use; -1 skips capture.
            slot = self._new_slot(shape, graph_id=len(self._slots) + 1)
            self._slots[shape] = slot
        return slot

    def _new_slot(self, shape: tuple[int, ...], graph_id: int) -> _GraphSlot:
        import onnxruntime as ort

        cp = import_cupy("cuda_graph=True")
        classes = self.session.get_outputs()[0].shape[-1]
        if not isinstance(classes, int):
            raise SuperchargeError(
                f"{self.model_path} has a dynamic class dim: CUDA graphs need fixed output shapes, "
                "run without cuda_graph"
            )
        with cp.cuda.Device(self.device_id):
            inp = cp.zeros(shape, dtype=self._input_type)
            out = cp.zeros((shape[0], classes), dtype=np.float32)
        binding = self.session.io_binding()
        binding.bind_input(
            self._input, self.device, self.device_id, self._input_type, list(shape), inp.data.ptr
        )
        binding.bind_output(
            self._output, self.device, self.device_id, np.float32, list(out.shape), out.data.ptr
        )
        # One ordinary run of this shape first ("-1": no capture, no replay), so the arena
        # grows and cuDNN searches its algorithms outside stream capture: ORT counts the
        # ordinary runs before capture per EP, not per graph id, so the next run captures.
        ordinary = ort.RunOptions()
        ordinary.add_run_config_entry("gpu_graph_id", "-1")
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding, ordinary)
        binding.synchronize_outputs()
        run_options = ort.RunOptions()
        # One captured graph per input shape, told apart by this run option.
        run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return _GraphSlot(binding, inp, out, run_options)

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        session = self.session
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device if self.device == "cpu" else f"{self.device}:{self.device_id}",
            "providers": list(session.get_providers()) if session else [],
            "node_placement": dict(self.node_placement),
            "assigned_nodes": assigned_nodes(session) if session else {},
            "io_binding": self.io_binding,
            "cuda_graph": self.cuda_graph,
            "batch_sizes": list(self.batch_sizes),
            "threads": self.threads or cores(),
            "spinning": self.spinning,
            "onnxruntime": ort.__version__,
            "model": str(self.model_path),
        }


def _static(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def _check_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(batch_sizes) or (1,)
    if not all(isinstance(n, Integral) and n > 0 for n in sizes):
        raise SuperchargeError(f"batch_sizes {sizes} must be positive integers, e.g. (1, 8)")
    return tuple(int(n) for n in sizes)


def _synchronize_cupy() -> None:
    """Wait for cupy's current stream (no-op without cupy: nothing was queued on it)."""
    try:
        import cupy
    except ImportError:
        return
    cupy.cuda.get_current_stream().synchronize()
