"""Speedup floors: parsing from the command line and pyproject.toml, matching, checking."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from supercharge.errors import SuperchargeError
from supercharge.floors import SpeedupFloor, check_floors, load_floors

CASE = "tf_efficientnet_lite0-ort-cpu-baked-fp32-bs1"


@pytest.mark.parametrize(
    "text, pattern, ratio",
    [
        ("ort-cpu-baked-fp32-bs1=4", "ort-cpu-baked-fp32-bs1", 4.0),
        ("*-int8-bs1=6.5", "*-int8-bs1", 6.5),
        ("a=b=2", "a=b", 2.0),  # the ratio is after the last '='
    ],
)
def test_a_floor_is_parsed_from_pattern_equals_ratio(text, pattern, ratio):
    assert SpeedupFloor.parse(text) == SpeedupFloor(pattern, ratio)


@pytest.mark.parametrize("text", ["ort-cpu", "=4", "ort-cpu=fast", "ort-cpu=0", "x=-1", "x=nan"])
def test_a_malformed_floor_is_a_one_line_error_naming_it(text):
    with pytest.raises(SuperchargeError, match=r"--min-speedup .*positive ratio") as info:
        SpeedupFloor.parse(text)
    assert repr(text) in str(info.value) and "\n" not in str(info.value)


def test_a_pattern_matches_any_model_unless_it_is_anchored():
    assert SpeedupFloor("ort-cpu-baked-fp32-bs1", 4).matches(CASE)
    assert SpeedupFloor("ort-cpu-*-bs1", 4).matches(CASE)
    assert SpeedupFloor(CASE, 4).matches(CASE)
    assert not SpeedupFloor("ort-cpu-baked-fp32-bs8", 4).matches(CASE)
    assert not SpeedupFloor("cpu-baked-fp32", 4).matches(CASE)  # a glob, not a substring
    assert not SpeedupFloor("*-resnet50-ort-cpu-baked-fp32-bs1", 4).matches(CASE)


def test_each_floor_is_checked_against_every_case_it_matches_or_reported_unmatched():
    speedups = {CASE: 3.1, CASE.replace("fp32", "int8"): 6.2}
    checks = check_floors(
        speedups,
        [SpeedupFloor("ort-cpu-baked-*-bs1", 4), SpeedupFloor("ort-cuda-*", 2)],
    )
    assert [(c.case, c.status) for c in checks] == [
        (CASE, "below-target"),
        (CASE.replace("fp32", "int8"), "ok"),
        (None, "unmatched"),
    ]
    # "at least": a speedup exactly at its floor meets it
    assert check_floors({CASE: 4.0}, [SpeedupFloor(CASE, 4.0)])[0].status == "ok"
    assert check_floors({CASE: 3.999}, [SpeedupFloor(CASE, 4.0)])[0].status == "below-target"
    assert checks[0].as_dict() == {
        "pattern": "ort-cpu-baked-*-bs1",
        "floor": 4.0,
        "case": CASE,
        "speedup": 3.1,
        "status": "below-target",
    }


def test_floors_load_from_pyproject(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[tool.supercharge.speedup_floors]\n"ort-cpu-baked-fp32-bs1" = 4\n"*-int8-bs1" = 6.5\n'
    )
    assert load_floors(path) == [
        SpeedupFloor("ort-cpu-baked-fp32-bs1", 4.0),
        SpeedupFloor("*-int8-bs1", 6.5),
    ]
    path.write_text("[tool.supercharge.tolerances.fp32]\nmin_cosine = 0.9\n")
    assert load_floors(path) == []


def test_the_shipped_pyproject_holds_the_default_models_cpu_targets():
    floors = {f.pattern: f.ratio for f in load_floors()}
    assert floors["tf_efficientnet_lite0-ort-cpu-baked-fp32-bs1"] == 4.0
    assert floors["tf_efficientnet_lite0-ort-cpu-baked-int8-bs1"] == 6.0


@pytest.mark.parametrize(
    "content, message",
    [
        ('[tool.supercharge.speedup_floors]\n"x" = "fast"\n', r"'x' = 'fast': give a case"),
        ('[tool.supercharge.speedup_floors]\n"x" = 0\n', r"'x' = 0: give a case pattern"),
        ("[tool.supercharge]\nspeedup_floors = 4\n", "must be a table"),
        ("[tool.supercharge.speedup_floors\n", "cannot read speedup floors from"),
    ],
)
def test_bad_floor_tables_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "pyproject.toml"
    path.write_text(content)
    with pytest.raises(SuperchargeError, match=message) as info:
        load_floors(path)
    assert "\n" not in str(info.value)


def test_a_named_floor_file_must_exist(tmp_path):
    with pytest.raises(SuperchargeError, match="does not exist"):
        load_floors(tmp_path / "nope.toml")


SESSION_TEST = """
from supercharge.cases import Case, Combo
from supercharge.report import END_TO_END, Timing


def test_records_two_timings(suite_results):
    model = "tf_efficientnet_lite0"
    for combo, median in (
        (Combo("torch-cpu", "timm", "fp32"), 0.012),
        (Combo("ort-cpu", "baked", "int8"), 0.003),
    ):
        suite_results.timings.append(Timing(Case(model, combo, 1), END_TO_END, median, 0.0, 10))
"""


def run_session(tmp_path, floors: str):
    """A pytest session in `tmp_path` with the plugin and a pyproject.toml holding `floors`."""
    (tmp_path / "pyproject.toml").write_text(f"[tool.supercharge.speedup_floors]\n{floors}")
    (tmp_path / "test_session.py").write_text(SESSION_TEST)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "supercharge.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "--report-dir",
            str(tmp_path / "report"),
            "test_session.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_session_report_checks_the_floors_of_pyproject(tmp_path):
    result = run_session(tmp_path, '"ort-cpu-baked-int8-bs1" = 6.0\n')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert (
        "| tf_efficientnet_lite0-ort-cpu-baked-int8-bs1 | 4.00x | 6x | NOT met |" in result.stdout
    )
    floors = json.loads((tmp_path / "report" / "speed.json").read_text())["floors"]
    assert [f["status"] for f in floors] == ["below-target"]


def test_a_bad_floor_table_stops_the_session_with_a_usage_error(tmp_path):
    result = run_session(tmp_path, '"ort-cpu-baked-int8-bs1" = "fast"\n')
    assert result.returncode == 4, result.stdout[-3000:]  # pytest's usage error
    assert "'ort-cpu-baked-int8-bs1' = 'fast': give a case pattern" in result.stderr
