"""The pytest layer's options and session fixtures; conftest.py only loads this module.

Artifacts come from the cache, so they are built once per session and reused across sessions.
GPU tests carry the `gpu` marker: where their backend cannot run they skip with the reason, and
under --require-gpu that skip becomes a failure, so a misconfigured GPU runner cannot pass by
skipping. Tests that take a `grid_case` (perf/) or `grid_combo` (accuracy/) argument are
parametrized over the grid in supercharge.cases, filtered by --backends, --preprocess,
--precisions, --batch-sizes.
Timings and agreement rows collected during the session become the report (supercharge.report).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest

from supercharge.errors import SuperchargeError
from supercharge.models import DEFAULT_MODEL

_RESULTS = pytest.StashKey["SuiteResults"]()
_FLOORS = pytest.StashKey[list]()  # floors.SpeedupFloor from [tool.supercharge.speedup_floors]
_MODEL_REF = pytest.StashKey[Any]()  # models.ModelRef of --model/--weights, resolved once
_SESSION = pytest.StashKey[pytest.Session]()  # so a report that cannot be written fails the run
_IMAGE = pytest.StashKey[Path]()  # --image, checked at configure
_CALIBRATION = pytest.StashKey[Path]()  # --calibration, checked at configure
_GATE_IMAGES = pytest.StashKey[list]()  # --gate-images' files, checked at configure
_GRID_CASES = pytest.StashKey[int]()  # grid cases collected: a run that timed none says so


def pytest_addoption(parser: pytest.Parser) -> None:
    from supercharge.images import DEFAULT_BENCHMARK_IMAGE as DEFAULT_PHOTO

    group = parser.getgroup("supercharge")
    group.addoption("--model", default=DEFAULT_MODEL, help="timm model name (default: %(default)s)")
    group.addoption(
        "--weights", default="pretrained", help="pretrained | random[:SEED] | path to a state dict"
    )
    group.addoption("--artifact-dir", default=None, help="artifact cache directory")
    group.addoption(
        "--malloc",
        choices=("hold", "default"),
        default="hold",
        help="hold (default): keep freed memory in glibc's heap so PyTorch CPU timings do not "
        "depend on allocation history (supercharge.malloc); default: glibc as it comes",
    )
    group.addoption(
        "--require-gpu",
        action="store_true",
        default=False,
        help="fail, instead of skipping, tests that need a GPU when none is usable",
    )
    group.addoption(
        "--backends",
        default=None,
        help="comma-separated backends to run (default: all): torch-cpu,torch-cuda,ort-cpu,...",
    )
    group.addoption(
        "--preprocess",
        default=None,
        help="comma-separated preprocessing (default: all): timm,numpy,cupy,baked,separable,seed",
    )
    group.addoption(
        "--precisions", default=None, help="comma-separated precisions (default: all): fp32,..."
    )
    group.addoption("--batch-sizes", default="1,8", help="comma-separated batch sizes (1,8)")
    group.addoption(
        "--cuda-graph",
        action="store_true",
        default=False,
        help="ort-cuda replays CUDA graphs where the graph allows it (the plain model, fed by "
        "timm, numpy or cupy preprocessing; the merged graphs keep shape nodes on the CPU); "
        "recorded in machine_info, so a gate names it when two runs differ",
    )
    group.addoption(
        "--image",
        default=None,
        help="the photo every benchmark batch repeats (default: fixtures/images/"
        "{name}, {width}x{height}); its size sets what preprocessing costs, so give a frame of "
        "your own feed".format(**DEFAULT_PHOTO),
    )
    group.addoption(
        "--calibration",
        default=None,
        help="folder of photos the int8 models are calibrated on (default: fixtures/"
        "calibration, held out from the photos the accuracy gates judge); give photos of your "
        "own data",
    )
    group.addoption(
        "--gate-images",
        default=None,
        help="folder of photos the accuracy gates judge every pipeline on (default: "
        "fixtures/images); give held-out photos of your own data",
    )
    group.addoption(
        "--report-dir",
        default=None,
        help="where the speed and accuracy report goes (default: <rootdir>/reports)",
    )


def _pyproject(config: pytest.Config) -> Path | None:
    """The suite's pyproject.toml: pytest's config file when it is one, else the rootdir's."""
    if config.inipath is not None and config.inipath.name == "pyproject.toml":
        return config.inipath
    candidate = config.rootpath / "pyproject.toml"
    return candidate if candidate.is_file() else None


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own, which fails with an INTERNALERROR
def pytest_configure(config: pytest.Config) -> None:
    from supercharge.floors import load_floors
    from supercharge.report import SuiteResults

    _check_hypothesis_profile(config)

    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.stash[_RESULTS] = SuiteResults()
    from supercharge.gpu import forbid_tf32

    forbid_tf32()  # before any CUDA library loads: fp32 cases are strict fp32, TensorRT's too
    try:
        _check_one_process_and_one_clock(config)
        combos, _ = _grid_selection(config)
        if config.getoption("--model") != DEFAULT_MODEL:  # before --collect-only lists its ids
            from supercharge.models import check_model_name

            check_model_name(config.getoption("--model"))
        pyproject = _pyproject(config)
        config.stash[_FLOORS] = load_floors(pyproject) if pyproject else []
        if config.getoption("--image"):  # one line before anything runs, not a failed case
            from supercharge.images import load_image

            image = config.invocation_params.dir / config.getoption("--image")
            with _naming("--image"):
                load_image(image)
            config.stash[_IMAGE] = image
        if config.getoption("--gate-images"):
            config.stash[_GATE_IMAGES] = _readable_images(config, "--gate-images", "gate")
        if config.getoption("--calibration"):
            calibration = _readable_images(config, "--calibration", "calibration")
            config.stash[_CALIBRATION] = calibration[0].parent
        if config.getoption("--calibration") or config.getoption("--gate-images"):
            _warn_when_int8_is_judged_in_sample(config)
    except SuperchargeError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("--report-dir"):  # the default (<rootdir>/reports): once grid cases run
        try:
            check_report_dir(_report_dir(config))
        except SuperchargeError as exc:
            raise pytest.UsageError(str(exc)) from None
    left_out = sorted({c.baseline().id for c in combos if c.baseline() not in combos})
    if left_out:  # a speedup is only ever against its own run's baseline
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"{', '.join(left_out)} (the speedup baseline) is filtered out by --backends, "
                "--preprocess or --precisions: this run's speedups read '-' and no speedup "
                "floor is checked; add it to the filters for ratios"
            ),
            stacklevel=2,
        )
    if config.getoption("--malloc") == "hold":
        from supercharge.malloc import hold_freed_memory

        # before any model is built; where it cannot apply, machine_info says "default"
        reason = hold_freed_memory()
        if reason is not None:
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(f"--malloc hold not applied: {reason}"), stacklevel=2
            )


@contextmanager
def _naming(option: str) -> Iterator[None]:
    """A SuperchargeError inside, prefixed with the option whose value caused it."""
    try:
        yield
    except SuperchargeError as exc:
        raise SuperchargeError(f"{option}: {exc}") from None


def _readable_images(config: pytest.Config, option: str, what: str) -> list[Path]:
    """The images in the folder `option` names, each decoded once: a one-line error naming the
    option before anything runs, not a failure in every test that reads them."""
    from supercharge.images import readable_image_files

    with _naming(option):
        return readable_image_files(config.invocation_params.dir / config.getoption(option), what)


def _default_gate_images(config: pytest.Config) -> list[Path]:
    from supercharge.images import image_files

    try:
        return image_files(config.rootpath / "fixtures" / "images", "fixture")
    except SuperchargeError:
        return []


def _warn_when_int8_is_judged_in_sample(config: pytest.Config) -> None:
    """A warning where the calibration folder in use (--calibration, else fixtures/calibration)
    holds a photo the accuracy gates in use judge: int8 would be graded in-sample."""
    from supercharge.cache import sha256_file
    from supercharge.images import image_files
    from supercharge.runners.quantize import CALIBRATION_IMAGES

    folder = config.stash.get(_CALIBRATION, CALIBRATION_IMAGES)
    try:
        paths = image_files(folder, "calibration")
    except SuperchargeError:  # the default folder missing outside a checkout: said at int8 build
        return
    gates = config.stash.get(_GATE_IMAGES, None) or _default_gate_images(config)
    judged = {sha256_file(p) for p in gates}
    shared = sorted(p.name for p in paths if sha256_file(p) in judged)
    if shared:
        which = "--calibration" if _CALIBRATION in config.stash else "the default calibration"
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"{which} {folder} holds photos the accuracy gates judge int8 on "
                f"({', '.join(shared)}): int8 is graded on photos it was calibrated on, which "
                "flatters it; keep --calibration and --gate-images apart"
            ),
            stacklevel=2,
        )


def _check_one_process_and_one_clock(config: pytest.Config) -> None:
    """Refuse what would make the grid's numbers or report wrong without a word:
    - pytest-xdist's -n, where the grid or the gates run: cases are timed one at a time on the
      whole machine (workers would time each other's load), pytest-benchmark turns itself off
      under xdist, and each worker would write its part of the report over the others';
    - a --benchmark-timer other than time.perf_counter: the warm-ups, the round plan and the
      paired baseline are timed with perf_counter, so a ratio would mix two clocks."""
    workers = getattr(config.option, "numprocesses", None)
    if workers and _runs_the_grid(config):
        raise SuperchargeError(
            f"-n {workers}: the benchmark grid and the accuracy gates run in one process (each "
            "case is timed alone on the machine, and the report is one session's); run them "
            "without -n (tests/ alone may use it)"
        )
    timer = getattr(config.option, "benchmark_timer", None)
    name = getattr(timer, "name", None) or getattr(timer, "__name__", None) or timer
    if timer is not None and "perf_counter" not in str(name):
        raise SuperchargeError(
            f"--benchmark-timer {name}: this suite times with time.perf_counter (the warm-ups "
            "and the paired baseline too, so a speedup compares one clock); leave the option out"
        )


def _runs_the_grid(config: pytest.Config) -> bool:
    """Whether the run's paths (the command line's, else testpaths) reach perf/ or accuracy/."""
    root = config.rootpath.resolve()
    grid = [root / "perf", root / "accuracy"]
    args = config.args or [str(root)]
    for arg in args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if any(path == g or g in path.parents or path in g.parents for g in grid):
            return True
    return False


def _register_hypothesis_profiles() -> None:
    """`fast` (default, for the README test command) and `thorough` (>= 1000 examples).

    Choose with hypothesis' own option: --hypothesis-profile=thorough.
    """
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:
        return
    common = {
        "deadline": None,
        "derandomize": False,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("fast", max_examples=25, **common)
    settings.register_profile("thorough", max_examples=1000, **common)
    settings.load_profile("fast")


_register_hypothesis_profiles()


def _check_hypothesis_profile(config: pytest.Config) -> None:
    """--hypothesis-profile NAME must be registered: a usage error naming ours, not hypothesis'
    INTERNALERROR traceback."""
    try:
        name = config.getoption("--hypothesis-profile")
        from hypothesis import settings
        from hypothesis.errors import InvalidArgument
    except (ValueError, ImportError):  # hypothesis not installed: no such option
        return
    if not name:
        return
    try:
        settings.get_profile(name)
    except InvalidArgument:
        raise pytest.UsageError(
            f"--hypothesis-profile {name!r} is not registered: use fast (the default, 25 "
            "examples) or thorough (1000)"
        ) from None


def gpu_unavailable_reason(backend: str | None = None, preprocess: str | None = None) -> str | None:
    """Why a GPU test (of `backend` with `preprocess`, if given) cannot run here, or None."""
    from supercharge import gpu

    if backend is None:
        return gpu.cuda_unavailable_reason()
    return gpu.backend_unavailable_reason(backend, preprocess)


def _grid_selection(config: pytest.Config) -> tuple[list[Any], tuple[int, ...]]:
    """The combos and batch sizes the grid options select (raises SuperchargeError)."""
    from supercharge import cases

    options = {name: config.getoption(name) for name in GRID_OPTIONS}
    chosen = " ".join(f"{k} {v}" for k, v in options.items() if v is not None)
    try:
        combos = cases.combos(
            backends=cases.parse_list(options["--backends"]),
            preprocess=cases.parse_list(options["--preprocess"]),
            precisions=cases.parse_list(options["--precisions"]),
        )
    except SuperchargeError as exc:  # say which option
        raise SuperchargeError(f"{chosen}: {exc}") from None
    if not combos:
        raise SuperchargeError(
            f"{chosen} select no valid case (e.g. baked preprocessing needs an ONNX Runtime "
            "backend, bf16 a torch one): widen one of them"
        )
    return combos, cases.parse_batch_sizes(config.getoption("--batch-sizes"))


GRID_OPTIONS = ("--backends", "--preprocess", "--precisions")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `grid_combo` (accuracy) and `grid_case` (perf) over the filtered grid.

    The names are prefixed so a suite's own `case`/`combo` parameters never collide."""
    wanted = [name for name in ("grid_case", "grid_combo") if name in metafunc.fixturenames]
    if not wanted:
        return
    from supercharge import cases

    config = metafunc.config
    combos, batch_sizes = _grid_selection(config)  # validated in pytest_configure
    model = config.getoption("--model")

    def marks(combo: Any) -> list[pytest.MarkDecorator]:
        if combo.device == "cpu":
            return []
        return [pytest.mark.gpu(backend=combo.backend, preprocess=combo.preprocess)]

    if "grid_case" in wanted:
        params = [
            pytest.param(c, id=c.id, marks=marks(c.combo))
            for c in cases.grid(model, combos, batch_sizes)
        ]
        metafunc.parametrize("grid_case", params)
    else:
        params = [pytest.param(c, id=f"{model}-{c.id}", marks=marks(c)) for c in combos]
        metafunc.parametrize("grid_combo", params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run each pipeline's grid cases back to back (end to end, then the model alone), so the
    one-pipeline cache in `pipeline_for` builds each pipeline once."""
    if any("grid_case" in _params(item) for item in items) and not config.pluginmanager.hasplugin(
        "benchmark"
    ):  # else every case errors with "fixture 'benchmark' not found" and a list of fixtures
        raise pytest.UsageError(
            "perf/ times its cases with pytest-benchmark, which is not active (-p no:benchmark, "
            "or not installed: pip install 'pytest-benchmark>=5.3.1'); run accuracy/ or tests/ "
            "alone without it"
        )
    if any({"grid_case", "grid_combo"} & set(_params(item)) for item in items):
        _check_model(config)
        if not config.getoption("--report-dir"):  # a chosen one was checked at configure
            try:  # only now: `pytest tests` on a read-only checkout writes no report
                check_report_dir(_report_dir(config), chosen=False)
            except SuperchargeError as exc:
                raise pytest.UsageError(str(exc)) from None
    slots = [i for i, item in enumerate(items) if "grid_case" in _params(item)]
    config.stash[_GRID_CASES] = len(slots)
    if not slots:
        return
    combos, _ = _grid_selection(config)
    order = {combo: n for n, combo in enumerate(combos)}

    def key(i: int) -> tuple[int, int, int]:
        case = _params(items[i])["grid_case"]
        return (order.get(case.combo, len(order)), case.batch_size, i)

    reordered = [items[i] for i in sorted(slots, key=key)]
    for slot, item in zip(slots, reordered, strict=True):
        items[slot] = item


def _check_model(config: pytest.Config) -> None:
    """--model and --weights, checked once when grid tests are collected (cheap: no model is
    built): a typo is one usage error, not the same setup error on every case."""
    from supercharge.models import resolve_model

    try:
        config.stash[_MODEL_REF] = resolve_model(
            config.getoption("--model"), config.getoption("--weights")
        )
    except SuperchargeError as exc:
        raise pytest.UsageError(str(exc)) from None


def _params(item: pytest.Item) -> dict[str, Any]:
    callspec = getattr(item, "callspec", None)
    return callspec.params if callspec is not None else {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return
    reason = gpu_unavailable_reason(**marker.kwargs)
    if reason is None:
        return
    if item.config.getoption("--require-gpu"):
        pytest.fail(f"--require-gpu: {reason}", pytrace=False)
    pytest.skip(reason)


def _user_error(exc: SuperchargeError) -> NoReturn:
    """Fail the test with the error's one line (no traceback, no chained exception)."""
    raise pytest.fail.Exception(str(exc), pytrace=False) from None


@pytest.fixture(scope="session")
def artifact_cache(pytestconfig: pytest.Config):
    from supercharge.cache import ArtifactCache

    try:
        return ArtifactCache(pytestconfig.getoption("--artifact-dir"))
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def model_bundle(pytestconfig: pytest.Config):
    """The model under test (--model, --weights), loaded once per session."""
    from supercharge.models import load_bundle

    # the reference resolved at collection (weights located and hashed once), if grid tests ran
    model = pytestconfig.stash.get(_MODEL_REF, None) or pytestconfig.getoption("--model")
    try:
        return load_bundle(model, pytestconfig.getoption("--weights"))
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def onnx_model(model_bundle, artifact_cache):
    """The checked ONNX export of the model under test (an Artifact), from the cache."""
    from supercharge.export import export_onnx

    try:
        return export_onnx(model_bundle, artifact_cache)
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def fixture_image_paths(pytestconfig: pytest.Config) -> list[Path]:
    """The photos in fixtures/images (sources and licenses in fixtures/README.md)."""
    paths = _default_gate_images(pytestconfig)
    if not paths:
        folder = pytestconfig.rootpath / "fixtures" / "images"
        pytest.fail(
            f"no fixture images in {folder}: run from the repository root, or give your own "
            "photos with --gate-images DIR",
            pytrace=False,
        )
    return paths


@pytest.fixture(scope="session")
def fixture_images(fixture_image_paths):
    """Decoded RGB PIL images of the fixture photos."""
    return _decoded(fixture_image_paths)


def _decoded(paths: list[Path]) -> dict[str, Any]:
    """Decoded RGB PIL images by file name; a broken photo fails with one line naming it."""
    from supercharge.images import load_image

    try:
        return {p.name: load_image(p) for p in paths}
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def gate_image_paths(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> list[Path]:
    """The photos the accuracy gates judge on: --gate-images, else the fixture photos (only
    then needed: an installed package has none)."""
    chosen = pytestconfig.stash.get(_GATE_IMAGES, None)
    return chosen or request.getfixturevalue("fixture_image_paths")


@pytest.fixture(scope="session")
def gate_images(gate_image_paths) -> dict[str, Any]:
    """Decoded RGB PIL images of the gate photos, by file name."""
    return _decoded(gate_image_paths)


@pytest.fixture(scope="session")
def calibration_folder(pytestconfig: pytest.Config) -> Path:
    """The folder int8 is calibrated on: --calibration, else fixtures/calibration."""
    from supercharge.runners.quantize import CALIBRATION_IMAGES

    return pytestconfig.stash.get(_CALIBRATION, CALIBRATION_IMAGES)


@pytest.fixture(scope="session")
def benchmark_image(pytestconfig: pytest.Config, suite_results) -> Any:
    """The decoded photo the grid times (--image), recorded for the report and the gate."""
    from supercharge.images import DEFAULT_BENCHMARK_IMAGE as DEFAULT_PHOTO
    from supercharge.images import image_identity, load_image

    default = pytestconfig.rootpath / "fixtures" / "images" / DEFAULT_PHOTO["name"]
    path = pytestconfig.stash.get(_IMAGE, default)
    if not path.exists():  # the default photo, outside a source checkout
        _user_error(
            SuperchargeError(f"the default benchmark photo {path} is missing: pass --image PATH")
        )
    try:
        image = load_image(path)
    except SuperchargeError as exc:
        _user_error(exc)
    suite_results.image = image_identity(path, image)
    return image


@pytest.fixture(scope="session")
def batch_sizes(pytestconfig: pytest.Config) -> tuple[int, ...]:
    """--batch-sizes: every pipeline warms up (and TensorRT builds profiles) for these."""
    from supercharge.cases import parse_batch_sizes

    try:
        return parse_batch_sizes(pytestconfig.getoption("--batch-sizes"))
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def pipeline_for(
    pytestconfig: pytest.Config,
    model_bundle,
    artifact_cache,
    batch_sizes,
    gate_image_paths,
    suite_results,
) -> Callable[[Any], Any]:
    """combo -> prepared Pipeline. Only the latest one is kept, besides the baselines (one per
    device, timed around every case): the grid is ordered so that consecutive cases share a
    pipeline, and a large model's sessions are not all held at once. The machine's pace is
    taken here, before the first case and before each new pipeline (supercharge.pace; the end
    is taken at session end).
    A backend that must know its largest batch up front (TensorRT's profile: `max_batch`) is
    told the accuracy gates' batch of every gate photo too. With --cuda-graph, ort-cuda on
    the plain model graph captures and replays CUDA graphs (runners.ort_cuda)."""
    from supercharge.errors import memory_error, out_of_memory
    from supercharge.pace import Pace, measure
    from supercharge.pipeline import build_pipeline
    from supercharge.runners.base import grid_options

    cuda_graph = pytestconfig.getoption("--cuda-graph")
    if suite_results.pace is None:
        suite_results.pace = Pace(measure())

    held: dict[Any, Any] = {}
    baselines: dict[Any, Any] = {}

    def get(combo: Any) -> Any:
        store = baselines if combo.is_baseline else held
        if combo not in store:
            if store is held:
                held.clear()
                # between cases, with the last case's sessions gone: a mid-run phase shows
                suite_results.pace = suite_results.pace.with_probe(measure())
            options = grid_options(
                combo.backend, combo.preprocess, len(gate_image_paths), cuda_graph
            )
            if combo.precision == "int8" and _CALIBRATION in pytestconfig.stash:
                options["calibration"] = pytestconfig.stash[_CALIBRATION]
            try:
                store[combo] = build_pipeline(
                    model_bundle,
                    artifact_cache,
                    combo.backend,
                    combo.preprocess,
                    precision=combo.precision,
                    batch_sizes=batch_sizes,
                    **options,
                )
            except SuperchargeError as exc:
                _user_error(exc)
            except Exception as exc:  # the warm-ups run every batch size: too large shows here
                if not out_of_memory(exc):
                    raise
                sizes = ",".join(map(str, batch_sizes))
                _user_error(
                    memory_error(f"{combo.id}: --batch-sizes {sizes}", exc, "use smaller ones")
                )
        return store[combo]

    yield get
    held.clear()
    baselines.clear()


@pytest.fixture(scope="session")
def baseline_for(pytestconfig: pytest.Config, pipeline_for) -> Callable[[Any], Any]:
    """combo -> the prepared pipeline of its baseline, to time around the case; None for the
    baseline itself and when the grid options left the baseline out (the run then has no
    speedups for that device: a ratio across sessions would not be honest)."""
    combos, _ = _grid_selection(pytestconfig)

    def get(combo: Any) -> Any:
        base = combo.baseline()
        if combo.is_baseline or base not in combos:
            return None
        if base.device != "cpu" and gpu_unavailable_reason(base.backend, base.preprocess):
            # the baseline's own cases skip here (torch without CUDA, ORT on the GPU through
            # cupy): time the case unpaired (speedup '-'), do not fail it on its baseline
            return None
        return pipeline_for(base)

    return get


@pytest.fixture(scope="session")
def suite_results(pytestconfig: pytest.Config):
    """The session's timings and agreement rows; written as the report at the end."""
    return pytestconfig.stash[_RESULTS]


def _finish_pace(config: pytest.Config) -> Any:
    """The run's Pace, with its end measured once (by whichever end-of-session hook is first)."""
    from dataclasses import replace

    from supercharge.pace import measure

    results = config.stash.get(_RESULTS, None)
    pace = results.pace if results is not None else None
    if pace is not None and pace.end_ms is None:
        pace = results.pace = replace(pace, end_ms=measure())
    return pace


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark absent or disabled: not an error
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict) -> None:
    """The machine's pace at both ends of the run and the benchmark photo, beside (not in)
    machine_info: pytest-benchmark warns when machine_info differs from a compared run's, and
    the pace always differs."""
    pace = _finish_pace(config)
    results = config.stash.get(_RESULTS, None)
    ours = {
        "pace": pace.as_dict() if pace is not None else None,
        "image": results.image if results is not None else None,
    }
    if any(v is not None for v in ours.values()):
        output_json["supercharge"] = {k: v for k, v in ours.items() if v is not None}


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """CPU model, GPU, driver and the runtime versions, so compared runs say what differed."""
    from supercharge.report import machine_info as suite_machine_info

    machine_info.update(suite_machine_info())
    machine_info["ort_cuda_graph"] = bool(config.getoption("--cuda-graph"))


def check_report_dir(folder: Path, chosen: bool = True) -> None:
    """Refuse, before any test runs, a report folder that cannot be created or written: a
    report that fails at the end would lose a whole run's summary. Creates nothing."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        what = "is not a folder" if not probe.is_dir() else "is not writable"
        name = f"--report-dir {folder}" if chosen else f"the report folder {folder} (the default)"
        raise SuperchargeError(f"{name}: {probe} {what}: pass a writable folder to --report-dir")


def _report_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("--report-dir")
    return Path(chosen) if chosen else config.rootpath / "reports"


def _nothing_timed(config: pytest.Config) -> str:
    """The line for a run that collected grid cases and timed none: no report is written, so
    one already in the report folder is an earlier run's, and a reader must not take it for
    this one's."""
    folder = _report_dir(config)
    line = (
        f"supercharge: no case was timed ({config.stash[_GRID_CASES]} collected: skipped, "
        f"deselected, failed or --benchmark-disable), so no report was written to {folder}"
    )
    earlier = folder / "speed.md"
    if earlier.is_file():
        when = datetime.fromtimestamp(earlier.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        line += f"; the one there is an earlier run's ({when})"
    return line


def _session_status(exitstatus: int, terminalreporter: Any) -> str | None:
    """A line for the report when the session did not run to a clean end, else None."""
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "This run was interrupted: cases after the interruption are missing."
    failed = len(terminalreporter.stats.get("failed", [])) + len(
        terminalreporter.stats.get("error", [])
    )
    if failed:
        return f"{failed} test(s) of this run failed or errored: their cases may be missing."
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION] = session


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, None)
    if results is None or results.empty:
        if config.stash.get(_GRID_CASES, 0):
            terminalreporter.write_line(_nothing_timed(config), yellow=True)
        return
    from supercharge.report import write_report

    _finish_pace(config)
    folder = _report_dir(config)
    status = _session_status(exitstatus, terminalreporter)
    try:
        written, text = write_report(results, folder, config.stash.get(_FLOORS, []), status)
    except OSError as exc:  # checked at start; the disk can still fill or the folder vanish
        terminalreporter.write_line(
            f"supercharge: report NOT written to {folder} ({exc.strerror or exc}): the timings "
            "are in the benchmark JSON if --benchmark-json or --benchmark-save was given",
            red=True,
        )
        session = config.stash.get(_SESSION, None)
        if session is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a lost report is not a pass
        return
    terminalreporter.section("supercharge report")
    terminalreporter.write_line(text)
    for path in written:
        terminalreporter.write_line(f"wrote {path}")
