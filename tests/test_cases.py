"""The grid's enumeration and option parsing (supercharge.cases)."""

from __future__ import annotations

import json

import pytest

from supercharge import cases
from supercharge.errors import SuperchargeError


def test_case_ids_read_like_the_issue_says():
    combo = cases.Combo("ort-cpu", "baked", "fp32")
    case = cases.Case("tf_efficientnet_lite0", combo, 1)
    assert case.id == "tf_efficientnet_lite0-ort-cpu-baked-fp32-bs1"
    assert case.as_dict()["batch_size"] == 1 and combo.graph == "baked"


def test_every_combo_is_measured_against_eager_fp32_timm_on_its_own_device():
    for combo in cases.combos():
        base = combo.baseline()
        assert (base.preprocess, base.precision) == ("timm", "fp32")
        assert base.device == combo.device and base.backend.startswith("torch-")


def test_the_grid_excludes_impossible_combinations():
    found = {(c.backend, c.preprocess, c.precision) for c in cases.combos()}
    assert ("torch-cpu", "baked", "fp32") not in found  # torch does not run ONNX graphs
    assert ("ort-cpu", "cupy", "fp32") not in found  # device arrays into a host runtime
    assert ("torch-cpu", "timm", "fp16") not in found  # not in torch-cpu's precisions
    assert ("ort-cpu", "baked", "fp32") in found and ("ort-trt", "cupy", "fp16") in found
    assert cases.invalid_reason("torch-cpu", "seed", "fp32").startswith("seed preprocessing")


def test_filters_narrow_the_grid_and_batch_size_varies_fastest():
    combos = cases.combos(backends=["ort-cpu"], preprocess=["baked", "numpy"], precisions=["fp32"])
    assert [c.id for c in combos] == ["ort-cpu-numpy-fp32", "ort-cpu-baked-fp32"]
    grid = cases.grid("m", combos, (1, 8))
    assert [c.id for c in grid] == [
        "m-ort-cpu-numpy-fp32-bs1",
        "m-ort-cpu-numpy-fp32-bs8",
        "m-ort-cpu-baked-fp32-bs1",
        "m-ort-cpu-baked-fp32-bs8",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backends": ["ort-gpu"]}, "unknown backend 'ort-gpu': choose from torch-cpu"),
        ({"preprocess": ["opencv"]}, "unknown preprocessing 'opencv'"),
        ({"precisions": ["fp8"]}, "unknown precision 'fp8'"),
    ],
)
def test_unknown_filter_values_are_one_line_errors(kwargs, message):
    with pytest.raises(SuperchargeError, match=message) as err:
        cases.combos(**kwargs)
    assert "\n" not in str(err.value)


def test_option_parsing():
    assert cases.parse_list(None) is None and cases.parse_list("all") is None
    assert cases.parse_list("ort-cpu, torch-cpu") == ["ort-cpu", "torch-cpu"]
    assert cases.parse_batch_sizes("8,1,8") == (8, 1)
    assert cases.parse_batch_sizes(None) == cases.DEFAULT_BATCH_SIZES
    for bad in ("0", "one", "1,-2"):
        with pytest.raises(SuperchargeError, match=f"--batch-sizes '{bad}'"):
            cases.parse_batch_sizes(bad)


def test_bad_grid_options_stop_the_run_with_a_usage_error(pytester_run):
    result = pytester_run("--backends", "ort-gpu", "--collect-only", "perf")
    assert result.returncode == 4
    assert "unknown backend 'ort-gpu'" in result.stderr


def test_an_option_naming_nothing_is_an_error():
    with pytest.raises(SuperchargeError, match="',,' names nothing"):
        cases.parse_list(",,")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--backends", "ort-cpu", "--precisions", "bf16"), "select no valid case"),
        (("--backends", "torch-cpu", "--preprocess", "baked"), "select no valid case"),
        (("--backends", ",,"), "--backends ,,: ',,' names nothing"),
    ],
)
def test_grid_options_that_select_nothing_are_a_usage_error(pytester_run, args, message):
    """Not an INTERNALERROR from an empty parametrization: exit 4 and one line naming them."""
    result = pytester_run(*args, "--collect-only", "perf", "accuracy")
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "INTERNALERROR" not in result.stdout


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.png", None, "missing.png does not exist"),
        ("notes.png", b"not a picture", "is not an image PIL can read"),
    ],
)
def test_a_bad_benchmark_image_stops_the_run_before_it_starts(
    pytester_run, tmp_path, name, content, message
):
    """--image is read at configure: one line naming it, not a failure in every grid case."""
    image = tmp_path / name
    if content is not None:
        image.write_bytes(content)
    result = pytester_run("--image", str(image), "--collect-only", "perf")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and "--image: image" in lines[0] and message in lines[0]


def test_a_bad_calibration_folder_stops_the_run_before_it_starts(pytester_run, tmp_path):
    result = pytester_run("--calibration", str(tmp_path / "none"), "--collect-only", "perf")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and "--calibration: calibration folder" in lines[0]


def test_calibrating_on_the_gates_photos_is_warned_about(pytester_run, tmp_path):
    result = pytester_run("--calibration", "fixtures/images", "--collect-only", "perf")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "int8 is graded on photos it was calibrated on" in result.stdout
    assert "coffee.png" in result.stdout
    # judged against the gates' photos in use: --gate-images elsewhere, no overlap, no warning
    elsewhere = pytester_run(
        "--calibration", "fixtures/images", "--gate-images", "fixtures/calibration",
        "--collect-only", "perf",
    )  # fmt: skip
    assert elsewhere.returncode == 0 and "calibrated on" not in elsewhere.stdout


def test_gating_on_the_default_calibration_photos_is_warned_about(pytester_run):
    """int8 calibrates on fixtures/calibration unless --calibration names another: gate photos
    that include those grade int8 in-sample just the same."""
    result = pytester_run("--gate-images", "fixtures/calibration", "--collect-only", "perf")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "int8 is graded on photos it was calibrated on" in result.stdout
    assert "coins.png" in result.stdout


def test_a_bad_gate_images_folder_stops_the_run_before_it_starts(pytester_run, tmp_path):
    (tmp_path / "empty").mkdir()
    result = pytester_run("--gate-images", str(tmp_path / "empty"), "--collect-only", "accuracy")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and "--gate-images: no gate images in" in lines[0]


def test_a_report_dir_that_cannot_be_written_stops_the_run_before_it_starts(pytester_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = pytester_run("--report-dir", str(blocker / "reports"), "--collect-only", "perf")
    assert result.returncode == 4
    assert f"{blocker} is not a folder: pass a writable folder" in result.stderr


def test_the_default_report_folder_is_checked_once_grid_cases_are_collected(pytester_run, tmp_path):
    """<rootdir>/reports is refused before the grid runs, as --report-dir is; a run of tests/
    alone writes no report and is not held to it."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "reports").write_text("not a folder")
    grid = pytester_run("--rootdir", str(root), "--collect-only", "perf")
    assert grid.returncode == 4, grid.stdout[-2000:] + grid.stderr[-2000:]
    assert (
        f"the report folder {root / 'reports'} (the default): {root / 'reports'} is not a folder"
    ) in grid.stderr
    unit = pytester_run("--rootdir", str(root), "--collect-only", "tests/test_floors.py")
    assert unit.returncode == 0, unit.stdout[-2000:] + unit.stderr[-2000:]


def test_a_report_that_cannot_be_written_at_the_end_fails_the_run(pytester_run, tmp_path):
    """The folder passed the check at the start, then the disk filled: the run says where the
    timings still are and exits 1, not 0."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "full_disk.py").write_text(
        "import errno, supercharge.report\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "supercharge.report.write_report = full\n"
    )
    args = ["perf", "--model", "test_efficientnet", "--weights", "random", "--backends"]
    args += ["torch-cpu", "--preprocess", "timm", "--precisions", "fp32", "--batch-sizes", "1"]
    args += ["--benchmark-max-time=0.005", "--report-dir", str(tmp_path / "report")]
    result = pytester_run("-p", "full_disk", *args, plugins=plugins)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
    assert "supercharge: report NOT written to" in result.stdout
    assert "No space left on device" in result.stdout


EMULATE_TORCH_WITHOUT_CUDA = """
import dataclasses
from supercharge import gpu
from supercharge.runners import base
gpu.cuda_unavailable_reason = lambda: "torch 0+cpu is a CPU-only build: install a CUDA build"
gpu.cupy_unavailable_reason = lambda: None
gpu.provider_unavailable_reason = lambda provider: None
gpu.gpu_info = lambda: {}
def stand_in(bundle, cache, graph, precision, **options):
    from supercharge.runners.ort_runner import OrtRunner
    base._cuda_required("ort-cuda")
    path = base._graph_file(bundle, cache, graph, precision, options)
    return OrtRunner(path, backend="ort-cuda", precision=precision, **options)
base.BACKENDS["ort-cuda"] = dataclasses.replace(base.BACKENDS["ort-cuda"], factory=stand_in)
"""


def test_ort_gpu_cases_run_unpaired_where_the_torch_cuda_baseline_cannot(pytester_run, tmp_path):
    """A GPU machine with a CPU-only torch, ORT reaching the GPU through cupy: the torch-cuda
    cases skip, and the ORT GPU cases are timed without a pairing (speedup '-') instead of
    failing on their baseline. (ORT's CUDA EP is stood in by its CPU EP.)"""
    (tmp_path / "no_torch_cuda.py").write_text(EMULATE_TORCH_WITHOUT_CUDA)
    args = ["perf", "--model", "test_efficientnet", "--weights", "random", "--backends"]
    args += ["torch-cuda,ort-cuda", "--preprocess", "timm", "--precisions", "fp32"]
    args += ["--batch-sizes", "1", "--benchmark-max-time=0.005"]
    args += ["--report-dir", str(tmp_path / "report")]
    result = pytester_run("-p", "no_torch_cuda", *args, plugins=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed, 2 skipped" in result.stdout
    rows = json.loads((tmp_path / "report" / "speed.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"ort-cuda"} and len(rows) == 2
    assert all(r["speedup"] is None for r in rows), rows


def test_another_benchmark_timer_is_a_usage_error(pytester_run):
    """The warm-ups and the paired baseline use perf_counter: another timer mixes two clocks."""
    result = pytester_run("--benchmark-timer", "time.process_time", "--collect-only", "perf")
    assert result.returncode == 4
    assert result.stderr.strip().startswith("ERROR: --benchmark-timer time.process_time: ")
    ok = pytester_run("--benchmark-timer", "time.perf_counter", "--collect-only", "perf")
    assert ok.returncode == 0


def test_xdist_is_refused_where_the_grid_runs(pytester_run, tmp_path):
    """-n would time cases against each other's load and split the report across workers; the
    suite's unit tests alone may still use it. (pytest-xdist is not a dependency: its
    --numprocesses, which -n sets, is stood in for by a two-line plugin.)"""
    import importlib.util

    if importlib.util.find_spec("xdist") is not None:
        pytest.skip("pytest-xdist is installed here: its own -n would clash with the stand-in")
    (tmp_path / "fake_xdist.py").write_text(
        "def pytest_addoption(parser):\n"
        "    parser.addoption('--numprocesses', dest='numprocesses', default=None)\n"
    )
    for where in ("perf", "accuracy/test_gates.py", None):
        args = ["-p", "fake_xdist", "--numprocesses", "2", "--collect-only"]
        args += [where] if where else []
        result = pytester_run(*args, plugins=tmp_path)
        assert result.returncode == 4, (where, result.stdout[-1000:], result.stderr[-1000:])
        assert "ERROR: -n 2: the benchmark grid and the accuracy gates run in one process" in (
            result.stderr
        )
    unit = pytester_run(
        "-p",
        "fake_xdist",
        "--numprocesses",
        "2",
        "--collect-only",
        "tests/test_floors.py",
        plugins=tmp_path,
    )
    assert unit.returncode == 0, unit.stderr[-1000:]


def test_filters_that_leave_out_the_baseline_say_the_speedups_go(pytester_run):
    """--precisions int8 drops PyTorch fp32, the baseline every speedup is measured against."""
    result = pytester_run("--collect-only", "-q", "perf", "--precisions", "int8")
    assert result.returncode == 0
    assert "torch-cpu-timm-fp32 (the speedup baseline) is filtered out" in result.stdout
    kept = pytester_run("--collect-only", "-q", "perf", "--precisions", "int8,fp32")
    assert "(the speedup baseline) is filtered out" not in kept.stdout


def test_the_suite_loads_without_pytest_benchmark(pytester_run):
    """Its pytest-benchmark hooks are optional: a unit-test run with the plugin off works."""
    result = pytester_run("-p", "no:benchmark", "tests/test_floors.py", "-q")
    assert result.returncode == 0 and "INTERNALERROR" not in result.stdout + result.stderr


def test_the_grid_without_pytest_benchmark_is_one_usage_error(pytester_run):
    """perf/ needs the benchmark fixture: one line saying so, not one setup error per case."""
    result = pytester_run("-p", "no:benchmark", "perf", "--batch-sizes", "1")
    assert result.returncode == 4, result.stdout[-2000:]
    assert result.stderr.strip().startswith("ERROR: perf/ times its cases with pytest-benchmark")
    assert "fixture 'benchmark' not found" not in result.stdout


def test_an_unknown_hypothesis_profile_is_a_usage_error_naming_ours(pytester_run):
    result = pytester_run("--hypothesis-profile", "nope", "--collect-only", "accuracy")
    assert result.returncode == 4 and "INTERNALERROR" not in result.stdout + result.stderr
    assert result.stderr.strip() == (
        "ERROR: --hypothesis-profile 'nope' is not registered: use fast (the default, 25 "
        "examples) or thorough (1000)"
    )
    assert (
        pytester_run("--hypothesis-profile", "thorough", "--collect-only", "accuracy").returncode
        == 0
    )


def test_an_unknown_model_is_one_usage_error_not_one_per_case(pytester_run):
    result = pytester_run(
        "perf", "--model", "nope", "--backends", "torch-cpu", "--preprocess", "timm",
        "--precisions", "fp32", "--batch-sizes", "1",
    )  # fmt: skip
    assert result.returncode == 4
    assert result.stderr.strip() == "ERROR: unknown model 'nope': see timm.list_models()"
    listed = pytester_run("--collect-only", "-q", "perf", "--model", "nope")
    assert listed.returncode == 4 and "nope-" not in listed.stdout  # refused before any id


def test_setup_errors_are_one_line(pytester_run, tmp_path):
    """A fixture's error fails each case's setup with its one line, no chained traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = pytester_run(
        "perf", "--artifact-dir", str(blocker), "--weights", "random", "--backends", "ort-cpu",
        "--preprocess", "timm", "--precisions", "fp32", "--batch-sizes", "1", "-k", "end_to_end",
    )  # fmt: skip
    assert result.returncode == 1
    block = result.stdout.split("ERROR at setup of", 1)[1].split("short test summary")[0]
    block = block.split("warnings summary")[0]  # the baseline left out by the filters is warned
    body = [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("=")]
    assert len(body) == 1 and body[0].startswith(f"artifact dir {blocker} is a file, not a folder")


def test_batch_sizes_no_machine_could_hold_are_refused_up_front(monkeypatch):
    """A batch of N images needs at least N 224x224 RGB images of memory; more than the RAM is
    refused when the options are read, with the largest batch that could fit at all."""
    monkeypatch.setattr(cases, "physical_memory", lambda: 2**30)  # a 1 GiB machine
    most = 2**30 // cases.MIN_IMAGE_BYTES
    assert cases.parse_batch_sizes(f"1,{most}") == (1, most)
    with pytest.raises(
        SuperchargeError, match=rf"--batch-sizes {most + 1}: .* has 1.0 GiB: use at most {most} "
    ):
        cases.parse_batch_sizes(f"1,{most + 1}")
    monkeypatch.setattr(cases, "physical_memory", lambda: None)  # an OS that does not say
    assert cases.parse_batch_sizes("99999999") == (99999999,)


def test_an_indeterminate_memory_size_refuses_nothing(monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": -1}  # POSIX: -1 is "indeterminate"
    monkeypatch.setattr(cases.os, "sysconf", pages.__getitem__)
    assert cases.physical_memory() is None
    assert cases.parse_batch_sizes("1,8") == (1, 8)


def test_an_impossible_batch_size_is_a_usage_error(pytester_run):
    result = pytester_run("perf", "--batch-sizes", "1,99999999999", "--collect-only")
    assert result.returncode == 4
    assert result.stderr.startswith("ERROR: --batch-sizes 99999999999: that many images alone")


def test_a_batch_that_runs_out_of_memory_while_warming_up_is_one_line(pytester_run, tmp_path):
    """Allocation failures (numpy's MemoryError, ORT's and torch's RuntimeErrors) while a
    pipeline warms up at every batch size fail the case with one line naming the batch sizes."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "no_memory.py").write_text(
        "import supercharge.pipeline\n"
        "import numpy\n"
        "def refuse(*args, **kwargs):\n"
        "    numpy.empty(2**46)  # a real MemoryError: 512 TiB\n"
        "supercharge.pipeline.build_pipeline = refuse\n"
    )
    result = pytester_run(
        "perf", "-p", "no_memory", "--weights", "random", "--backends", "ort-cpu",
        "--preprocess", "baked", "--precisions", "fp32", "--batch-sizes", "1,2",
        "-k", "end_to_end", plugins=plugins,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    failures = result.stdout.split("= FAILURES =", 1)[1].split("= warnings summary")[0]
    lines = [line for line in failures.splitlines()[1:] if line.strip(" =")]
    line = (
        "ort-cpu-baked-fp32: --batch-sizes 1,2 does not fit in this machine's memory (Unable to"
        " allocate 512. TiB for an array with shape (70368744177664,) and data type float64): use"
        " smaller ones"
    )
    assert [line for line in lines if not line.startswith("_")] == [line, line], lines  # bs1, bs2
