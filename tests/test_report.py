"""The report: speedups against the same run's baseline, tables, JSON, chart, machine info."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from supercharge.cases import Case, Combo
from supercharge.floors import FloorCheck, SpeedupFloor
from supercharge.report import (
    END_TO_END,
    MODEL_ONLY,
    SuiteResults,
    Timing,
    floors_markdown,
    machine_info,
    speed_markdown,
    speed_rows,
    write_report,
)

MODEL = "tf_efficientnet_lite0"


def timing(backend, preprocess, precision, n, median, group=END_TO_END):
    case = Case(MODEL, Combo(backend, preprocess, precision), n)
    ran = {"providers": ["CPUExecutionProvider"]} if backend.startswith("ort") else {}
    return Timing(case, group, median, median / 10, 20, ran)


def sample() -> SuiteResults:
    return SuiteResults(
        timings=[
            timing("torch-cpu", "timm", "fp32", 1, 0.040),
            timing("ort-cpu", "baked", "fp32", 1, 0.010),
            timing("ort-cpu", "baked", "fp32", 8, 0.050),  # no bs8 baseline in this run
            timing("torch-cpu", "timm", "fp32", 1, 0.030, MODEL_ONLY),
            timing("ort-cpu", "baked", "fp32", 1, 0.015, MODEL_ONLY),
        ]
    )


def test_speedup_is_against_the_same_runs_baseline_per_batch_size_and_group():
    rows = {(r["case"], r["group"]): r for r in speed_rows(sample().timings)}
    assert rows[(f"{MODEL}-torch-cpu-timm-fp32-bs1", END_TO_END)]["speedup"] == 1.0
    assert rows[(f"{MODEL}-ort-cpu-baked-fp32-bs1", END_TO_END)]["speedup"] == 4.0
    assert rows[(f"{MODEL}-ort-cpu-baked-fp32-bs1", MODEL_ONLY)]["speedup"] == 2.0
    # a ratio against another session's baseline would not be honest: none is given
    assert rows[(f"{MODEL}-ort-cpu-baked-fp32-bs8", END_TO_END)]["speedup"] is None
    bs8 = rows[(f"{MODEL}-ort-cpu-baked-fp32-bs8", END_TO_END)]
    assert bs8["ms_per_image"] == 6.25 and bs8["images_per_s"] == 160.0
    # the spread on the same per-image scale as ms/image, beside the rounds' own
    assert bs8["iqr_ms"] == 5.0 and bs8["iqr_ms_per_image"] == 0.625
    assert "| IQR ms/image |" in speed_markdown(list(rows.values()))


def test_write_report_writes_tables_json_and_chart(tmp_path):
    written, text = write_report(sample(), tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == ["speed.json", "speed.md", "speed.png"]
    assert "| ort-cpu" not in text  # rows are named by case id
    assert f"{MODEL}-ort-cpu-baked-fp32-bs1" in text and "| 4.00x |" in text
    payload = json.loads((tmp_path / "report" / "speed.json").read_text())
    assert {r["case"] for r in payload["rows"]} >= {f"{MODEL}-torch-cpu-timm-fp32-bs1"}
    assert payload["machine_info"]["cpu_count"] >= 1
    assert (tmp_path / "report" / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "report").glob(".*tmp"))  # no half-written files left


def test_an_interrupted_run_says_so_at_the_top_of_its_report(tmp_path):
    status = "This run was interrupted: cases after the interruption are missing."
    write_report(sample(), tmp_path, status=status)
    assert f"**{status}**" in (tmp_path / "speed.md").read_text().split("| case")[0]
    assert json.loads((tmp_path / "speed.json").read_text())["status"] == status
    write_report(sample(), tmp_path)
    assert "interrupted" not in (tmp_path / "speed.md").read_text()
    assert json.loads((tmp_path / "speed.json").read_text())["status"] is None


def test_a_run_without_end_to_end_cases_leaves_no_earlier_chart(tmp_path):
    write_report(sample(), tmp_path)
    assert (tmp_path / "speed.png").is_file()
    model_only = SuiteResults(timings=[t for t in sample().timings if t.group == MODEL_ONLY])
    written, _ = write_report(model_only, tmp_path)
    assert not (tmp_path / "speed.png").exists() and tmp_path / "speed.md" in written


def test_the_session_status_line_names_an_interruption_or_failures():
    from types import SimpleNamespace

    import pytest

    from supercharge.pytest_plugin import _session_status

    clean = SimpleNamespace(stats={"passed": [1, 2]})
    assert _session_status(pytest.ExitCode.OK, clean) is None
    assert "interrupted" in _session_status(pytest.ExitCode.INTERRUPTED, clean)
    failing = SimpleNamespace(stats={"failed": [1], "error": [2, 3]})
    assert _session_status(pytest.ExitCode.TESTS_FAILED, failing).startswith("3 test(s)")


def test_machine_info_names_the_cpu_and_runtime_versions():
    from importlib.metadata import version

    import torch

    info = machine_info()
    assert info["cpu_model"]
    names = ("torch", "onnxruntime", "timm", "onnx", "pillow", "numpy")
    installed = {name: version(name) for name in names}
    assert {name: info[name] for name in installed} == installed  # each its own distribution's
    from supercharge.gpu import tensorrt_version

    # recorded even when absent (None), so two runs' TensorRT can always be compared
    assert "tensorrt" in info and info["tensorrt"] == tensorrt_version()
    assert info["torch_cuda_build"] == torch.version.cuda  # "13.0" here, GPU or not


def test_a_busy_baseline_flags_its_speedups_as_noisy():
    calm = sample().timings
    rows = speed_rows(calm)
    assert not any(r["noisy"] for r in rows)
    assert "(noisy)" not in speed_markdown(rows)
    busy = [
        Timing(t.case, t.group, t.median_s, t.median_s * 0.3, t.rounds, t.ran)
        if t.case.combo.backend == "torch-cpu" and t.group == END_TO_END
        else t
        for t in calm
    ]
    rows = {(r["case"], r["group"]): r for r in speed_rows(busy)}
    assert rows[(f"{MODEL}-ort-cpu-baked-fp32-bs1", END_TO_END)]["noisy"]
    assert not rows[(f"{MODEL}-ort-cpu-baked-fp32-bs1", MODEL_ONLY)]["noisy"]
    text = speed_markdown(list(rows.values()))
    assert "| 4.00x (noisy) |" in text and "rerun before trusting" in text


def test_a_paired_baseline_sets_the_speedup_and_its_spread_the_noise_flag():
    base = timing("torch-cpu", "timm", "fp32", 8, 0.160)  # its own row: 20 ms/image
    calm = replace(
        timing("ort-cpu", "baked", "fp32", 8, 0.040),
        paired_baseline_s=0.240,  # the baseline as it ran around the case: 30 ms/image
        paired_baseline_iqr_s=0.012,
    )
    rows = {r["case"]: r for r in speed_rows([base, calm])}
    row = rows[f"{MODEL}-ort-cpu-baked-fp32-bs8"]
    assert row["speedup"] == 6.0 and row["speedup_basis"] == "paired" and not row["noisy"]
    assert row["baseline_ms_per_image"] == 30.0
    assert "baseline ms/image" in speed_markdown(list(rows.values()))
    assert "timed right before and after the case" in speed_markdown(list(rows.values()))
    busy = replace(calm, paired_baseline_iqr_s=0.048)  # 20% of the paired baseline's median
    assert speed_rows([base, busy])[1]["noisy"]


def test_floors_matched_by_this_run_are_reported_met_or_not_and_others_left_out(tmp_path):
    from supercharge.floors import SpeedupFloor

    floors = [
        SpeedupFloor("ort-cpu-baked-fp32-bs1", 3.0),  # 4.0x: met
        SpeedupFloor("ort-cpu-baked-*", 5.0),  # matches bs1 (4.0x, not met) and bs8 (no speedup)
        SpeedupFloor("eva02_large_patch14_448-*", 1.5),  # another model's: not this run's
    ]
    _, text = write_report(sample(), tmp_path, floors)
    assert "Speedup floors" in text
    floor_rows = [line for line in text.splitlines() if " met | " in line]
    assert f"| {MODEL}-ort-cpu-baked-fp32-bs1 | 4.00x | 3x | met | ort-cpu-baked-fp32-bs1 |" in text
    assert f"| {MODEL}-ort-cpu-baked-fp32-bs1 | 4.00x | 5x | NOT met | ort-cpu-baked-* |" in text
    assert len(floor_rows) == 2 and "eva02" not in text  # bs8 has no speedup, eva02 no case
    saved = json.loads((tmp_path / "speed.json").read_text())["floors"]
    assert [(f["pattern"], f["status"]) for f in saved] == [
        ("ort-cpu-baked-fp32-bs1", "ok"),
        ("ort-cpu-baked-*", "below-target"),
    ]
    assert saved[0]["speedup"] == 4.0


def test_a_floor_on_a_noisy_speedup_says_so(tmp_path):
    from supercharge.floors import SpeedupFloor

    results = sample()
    results.timings[1] = replace(results.timings[1], iqr_s=0.005)  # 50% of its median
    _, text = write_report(results, tmp_path, [SpeedupFloor("ort-cpu-baked-fp32-bs1", 3.0)])
    assert f"| {MODEL}-ort-cpu-baked-fp32-bs1 | 4.00x (noisy) | 3x | met |" in text


def test_without_floors_the_report_has_no_floor_section(tmp_path):
    _, text = write_report(sample(), tmp_path)
    assert "Speedup floors" not in text
    assert json.loads((tmp_path / "speed.json").read_text())["floors"] == []


def test_a_floor_missed_by_a_hair_is_shown_rounded_down():
    check = FloorCheck(SpeedupFloor("x", 4.0), "x", 3.996)
    assert "| x | 3.99x | 4x | NOT met | x |" in floors_markdown([check])
    met = FloorCheck(SpeedupFloor("x", 4.0), "x", 4.004)
    assert "| x | 4.00x | 4x | met | x |" in floors_markdown([met])


def test_the_speed_table_and_the_floors_table_print_one_speedup_alike(tmp_path):
    """3.996x missed a 4x floor: the speed table said 4.00x beside the floors table's 3.99x
    NOT met. Both round down now."""
    results = SuiteResults(
        timings=[
            timing("torch-cpu", "timm", "fp32", 1, 0.03996),
            timing("ort-cpu", "baked", "fp32", 1, 0.010),
        ]
    )
    _, text = write_report(results, tmp_path, [SpeedupFloor("ort-cpu-baked-fp32-bs1", 4.0)])
    assert f"| {MODEL}-ort-cpu-baked-fp32-bs1 | 3.99x | 4x | NOT met |" in text
    speed = next(x for x in text.splitlines() if x.startswith(f"| {MODEL}-ort-cpu-baked"))
    assert "| 3.99x |" in speed and "4.00x" not in text


def test_files_of_an_earlier_run_are_kept_and_named(tmp_path, monkeypatch):
    """A run that ran no accuracy gate (or timed no case) leaves the other kind's files, which
    scripts/gpu_grid.sh needs; its own report and the terminal say whose they are."""
    import supercharge.accuracy_report

    monkeypatch.setattr(supercharge.accuracy_report, "accuracy_markdown", lambda rows: "| t |")
    accuracy_only = SuiteResults(accuracy=[{"combo": "ort-cpu-baked-fp32", "verdict": "pass"}])
    write_report(sample(), tmp_path)
    created = json.loads((tmp_path / "speed.json").read_text())["created"]
    _, text = write_report(accuracy_only, tmp_path)  # e.g. accuracy/test_gates.py alone
    note = f"speed.* there are an earlier run's ({created}): this run timed no case"
    assert note in text and note in (tmp_path / "accuracy.md").read_text()
    assert (tmp_path / "speed.md").is_file() and (tmp_path / "speed.png").is_file()
    _, text = write_report(sample(), tmp_path)  # e.g. -k end_to_end: the gates' files stay
    assert "accuracy.* there are an earlier run's" in text and "this run ran no accuracy" in text
    both = SuiteResults(timings=sample().timings, accuracy=accuracy_only.accuracy)
    _, text = write_report(both, tmp_path)
    assert "earlier run" not in text


def test_the_report_names_the_photo_it_timed(tmp_path):
    """Preprocessing's cost follows the image size: a table of speedups without it is half a
    statement."""
    results = sample()
    results.image = {"name": "frame.jpg", "width": 1920, "height": 1080, "sha256": "ab" * 32}
    _, text = write_report(results, tmp_path)
    line = "Timed on frame.jpg (1920x1080, sha256 abababab), repeated to fill each batch."
    assert line in text and line in (tmp_path / "speed.md").read_text()
    assert json.loads((tmp_path / "speed.json").read_text())["image"] == results.image


def test_images_per_second_shows_no_digit_the_value_lacks():
    """6.0087 ms per image is 166.43 images/s: the table must not print 166.40."""
    (row,) = speed_rows([timing("ort-cpu", "baked", "fp32", 1, 0.0060087)])
    assert row["images_per_s"] == pytest.approx(1 / 0.0060087, abs=1e-3)
    assert "| 166.43 |" in speed_markdown([row])
    (slow,) = speed_rows([timing("torch-cpu", "timm", "fp32", 8, 16.03)])  # 0.49906 images/s
    assert "| 0.499 |" in speed_markdown([slow])
