"""The main job end to end, small: the perf grid and the accuracy gates run in a subprocess on a
tiny random model, and what they leave behind (report, benchmark JSON, skips) is checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from supercharge import gpu
from supercharge.cache import sha256_file
from supercharge.cli import main as cli_main
from supercharge.report import END_TO_END, MODEL_ONLY

pytestmark = pytest.mark.slow

GRID = [
    "--model",
    "test_efficientnet",
    "--weights",
    "random",
    "--precisions",
    "fp32",
    "--batch-sizes",
    "1,2",
    "--benchmark-max-time=0.005",
]
TARGETS = ("perf", "accuracy/test_gates.py")
IMAGE = "chelsea.png"  # 451x300
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, suite_in_subprocess):
    """One run of perf/ and the accuracy gates over torch-cpu, ort-cpu and torch-cuda."""
    tmp = tmp_path_factory.mktemp("grid")
    args = (
        *TARGETS,
        *GRID,
        "--backends",
        "torch-cpu,ort-cpu,torch-cuda",
        "--preprocess",
        "timm,numpy,baked,separable",
        "--report-dir",
        str(tmp / "report"),
        "--image",  # not the default photo, relative to where pytest runs
        f"fixtures/images/{IMAGE}",
        f"--benchmark-json={tmp / 'bench.json'}",
        "-rs",
    )
    return suite_in_subprocess(args, tmp / "artifacts"), tmp


def test_grid_run_passes_and_reports_every_cpu_case(grid_run):
    result, tmp = grid_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    rows = json.loads((tmp / "report" / "speed.json").read_text())["rows"]
    combos = {
        "torch-cpu-timm",
        "torch-cpu-numpy",
        "ort-cpu-timm",
        "ort-cpu-numpy",
        "ort-cpu-baked",
        "ort-cpu-separable",
    }
    expected = {
        (f"test_efficientnet-{c}-fp32-bs{bs}", group)
        for c in combos
        for bs in (1, 2)
        for group in (END_TO_END, MODEL_ONLY)
    }
    assert {(r["case"], r["group"]) for r in rows} == expected
    for row in rows:
        assert row["speedup"] is not None, row
        if row["backend"] == "torch-cpu" and row["preprocess"] == "timm":
            assert row["speedup"] == 1.0  # the baseline against itself
        else:
            assert row["speedup_basis"] == "paired", row
        if row["backend"] == "ort-cpu":
            assert row["providers"] == "CPUExecutionProvider", row
        assert row["rounds"] >= 10 and row["median_s"] > 0
    for name in ("speed.md", "speed.png", "accuracy.md", "accuracy.json"):
        assert (tmp / "report" / name).stat().st_size > 0, name
    verdicts = json.loads((tmp / "report" / "accuracy.json").read_text())["rows"]
    assert verdicts and {r["verdict"] for r in verdicts} == {"pass"}


def test_grid_run_records_what_ran_in_extra_info(grid_run):
    _, tmp = grid_run
    run = json.loads((tmp / "bench.json").read_text())
    benchmarks = run["benchmarks"]
    assert benchmarks
    assert run["machine_info"]["malloc"].startswith("hold")  # --malloc hold, the default
    assert run["machine_info"]["ort_cuda_graph"] is False  # --cuda-graph not given
    # the machine's pace, both ends, beside machine_info (which compared runs must share)
    pace = run["supercharge"]["pace"]
    assert pace["start_ms"] > 0 and pace["end_ms"] > 0 and "pace" not in run["machine_info"]
    assert pace["during_ms"] and all(ms > 0 for ms in pace["during_ms"])  # between cases too
    report = json.loads((tmp / "report" / "speed.json").read_text())
    assert report["pace"] == pace
    # the photo it timed (--image), for the report and the gate
    photo = ROOT / "fixtures" / "images" / IMAGE
    image = {"name": IMAGE, "width": 451, "height": 300, "sha256": sha256_file(photo)}
    assert run["supercharge"]["image"] == image and report["image"] == image
    assert f"Timed on {IMAGE} (451x300" in (tmp / "report" / "speed.md").read_text()
    assert "Machine pace (ORT CPU" in (tmp / "report" / "speed.md").read_text()
    for bench in benchmarks:
        info = bench["extra_info"]
        assert info["case"] in bench["name"] or info["case"] in bench["fullname"]
        assert info["timed"] in (END_TO_END, MODEL_ONLY)
        assert info["backend"] in ("torch-cpu", "ort-cpu") and info["precision"] == "fp32"
        assert info["preprocess"] in ("timm", "numpy", "baked", "separable")
        assert info["batch_size"] in (1, 2) and info["case"].endswith(f"bs{info['batch_size']}")
        per_s = info["batch_size"] / bench["stats"]["median"]
        assert info["images_per_s"] == pytest.approx(per_s, rel=1e-3)
        if info["backend"] == "ort-cpu":
            assert info["providers"][0] == "CPUExecutionProvider"
            assert info["node_placement"].get("CPUExecutionProvider", 0) > 0
        if (info["backend"], info["preprocess"]) == ("torch-cpu", "timm"):
            assert "paired_speedup" not in info  # the baseline is not paired with itself
        else:  # every other case has its baseline timed right around it
            assert info["paired_baseline_s"] > 0
            median = bench["stats"]["median"]
            assert info["paired_speedup"] == pytest.approx(info["paired_baseline_s"] / median)
            assert math.isfinite(info["paired_baseline_drift"])  # recorded for every pair


def test_grid_run_gates_against_itself(grid_run, capsys):
    _, tmp = grid_run
    copy = tmp / "bench-copy.json"  # the same run saved twice: a run compared with itself
    copy.write_bytes((tmp / "bench.json").read_bytes())
    assert cli_main(["gate", str(tmp / "bench.json"), str(tmp / "bench.json")]) == 2
    assert cli_main(["gate", str(tmp / "bench.json"), str(copy)]) == 0
    out = capsys.readouterr().out
    assert "0 failing" in out and "machine pace baseline -> current: +0% (steady)" in out
    # the run's own paired speedups, held to floors far below and far above them
    floor = ["--min-speedup", "ort-cpu-baked-fp32-bs*=0.001"]
    assert cli_main(["gate", str(tmp / "bench.json"), *floor]) == 0
    assert "0 failing: 2 held to speedup floors" in capsys.readouterr().out
    floor = ["--min-speedup", "ort-cpu-baked-fp32-bs1=1000"]
    assert cli_main(["gate", str(tmp / "bench.json"), *floor]) == 1
    assert "below-target test_efficientnet-ort-cpu-baked-fp32-bs1" in capsys.readouterr().out


@pytest.mark.skipif(
    gpu.backend_unavailable_reason("torch-cuda", "timm") is None, reason="a CUDA device is here"
)
def test_gpu_cases_skip_with_the_reason(grid_run):
    result, _ = grid_run
    reason = gpu.backend_unavailable_reason("torch-cuda", "timm")
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all(reason in line for line in skipped), result.stdout[-3000:]


@pytest.mark.skipif(
    gpu.backend_unavailable_reason("torch-cuda", "timm") is None, reason="a CUDA device is here"
)
def test_require_gpu_turns_the_skips_into_failures(pytester_run):
    result = pytester_run(
        "perf", *GRID, "--backends", "torch-cuda", "--preprocess", "timm", "--require-gpu"
    )
    assert result.returncode == 1, result.stdout[-3000:]
    reason = gpu.backend_unavailable_reason("torch-cuda", "timm")
    assert f"--require-gpu: {reason}" in result.stdout
    assert " 4 failed" in result.stdout or "4 errors" in result.stdout, result.stdout[-2000:]


@pytest.mark.skipif(
    gpu.backend_unavailable_reason("torch-cuda", "timm") is None, reason="a CUDA device is here"
)
def test_a_run_that_timed_nothing_says_the_report_there_is_an_earlier_runs(pytester_run, tmp_path):
    """Every case skipped (a GPU grid on a machine without one): no report is written, and the
    one left in the folder by an earlier run is named as such, not silently taken for this."""
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "speed.md").write_text("an earlier run's table\n")
    gpu_only = ("--backends", "torch-cuda", "--preprocess", "timm")
    result = pytester_run("perf", *GRID, *gpu_only, "--report-dir", str(folder))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "supercharge: no case was timed (4 collected" in result.stdout, result.stdout[-2000:]
    assert "the one there is an earlier run's" in result.stdout
    assert (folder / "speed.md").read_text() == "an earlier run's table\n"


def test_int8_calibration_and_the_gates_photos_come_from_the_folders_given(pytester_run, tmp_path):
    """--calibration reaches every int8 pipeline (timed and gated); --gate-images is what every
    gate judges, alone and as one batch."""
    import shutil

    own, gate = tmp_path / "own-photos", tmp_path / "held-out"
    own.mkdir()
    gate.mkdir()
    shutil.copy(ROOT / "fixtures" / "calibration" / "retina.jpg", own / "retina.jpg")
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(ROOT / "fixtures" / "images" / name, gate / name)
    args = [a if a != "fp32" else "fp32,int8" for a in GRID]
    result = pytester_run(
        *TARGETS, *args, "--backends", "torch-cpu,ort-cpu", "--preprocess", "timm,baked",
        "--batch-sizes", "1", "--calibration", str(own), "--gate-images", str(gate),
        "--report-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "graded on photos it was calibrated on" not in result.stdout
    manifests = [
        json.loads(m.read_text())["inputs"]["calibration"]["images"]
        for m in (tmp_path / "artifacts" / "onnx-int8").glob("*/manifest.json")
    ]
    assert manifests == [["retina.jpg"]]  # one int8 model, calibrated on that folder alone
    rows = json.loads((tmp_path / "r" / "accuracy.json").read_text())["rows"]
    assert {r["combo"] for r in rows if r["precision"] == "int8"} == {
        "ort-cpu-timm-int8",
        "ort-cpu-baked-int8",
    }
    assert {r["image"] for r in rows} == {"chelsea.png", "rocket.jpg"}
    assert {r["mode"] for r in rows} == {"single", "batch of 2"}
    report = (tmp_path / "r" / "accuracy.md").read_text()
    assert f"int8 calibrated on {own}." in report and "(chelsea.png, rocket.jpg)" in report


def test_without_the_fixture_photos_each_missing_default_names_its_option(pytester_run, tmp_path):
    """Outside a source checkout (no fixtures/ under the rootdir) the grid and the gates say
    which option supplies what is missing, and run once it is given."""
    root = tmp_path / "elsewhere"
    root.mkdir()
    common = [
        *TARGETS, "--rootdir", str(root), "--model", "test_efficientnet", "--weights", "random",
        "--backends", "torch-cpu", "--preprocess", "timm", "--precisions", "fp32",
        "--batch-sizes", "1", "--benchmark-max-time=0.005", "--report-dir", str(tmp_path / "r"),
    ]  # fmt: skip
    bare = pytester_run(*common)
    assert bare.returncode == 1, bare.stdout[-3000:]
    assert "coffee.png is missing: pass --image PATH" in bare.stdout
    assert "or give your own photos with --gate-images DIR" in bare.stdout
    photos = ROOT / "fixtures" / "images"
    given = pytester_run(*common, "--image", str(photos / IMAGE), "--gate-images", str(photos))
    assert given.returncode == 0, given.stdout[-3000:] + given.stderr[-2000:]
