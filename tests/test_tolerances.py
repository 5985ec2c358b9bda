"""Tolerance tables: the built-in defaults mirror pyproject.toml, overrides merge per precision
and preprocessing, and a typo or a wrong type is a one-line error rather than a looser gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from supercharge.errors import SuperchargeError
from supercharge.tolerances import DEFAULT_TOLERANCES, load_tolerances

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_defaults_mirror_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with (ROOT / "pyproject.toml").open("rb") as fh:
        table = tomllib.load(fh)["tool"]["supercharge"]["tolerances"]
    assert table == DEFAULT_TOLERANCES
    for precision in table:
        assert load_tolerances(ROOT / "pyproject.toml").get(precision).min_cosine < 1


def test_per_precision_and_per_preprocessing_overrides(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[project]\nname = 'x'\n\n"
        "[tool.supercharge.tolerances.fp16]\nmin_cosine = 0.5\nmin_top5_overlap = 3\n\n"
        "[tool.supercharge.tolerances.fp16.numpy]\nmax_prob_error = 0.25\n"
    )
    table = load_tolerances(path)
    fp16 = table.get("fp16")
    assert fp16.min_cosine == 0.5 and fp16.min_top5_overlap == 3
    assert fp16.max_prob_error == DEFAULT_TOLERANCES["fp16"]["max_prob_error"]
    assert fp16.source == "pyproject.toml: fp16"
    numpy16 = table.get("fp16", "numpy")
    assert numpy16.max_prob_error == 0.25 and numpy16.min_cosine == 0.5
    assert numpy16.source == "pyproject.toml: fp16.numpy"
    # untouched precisions keep their defaults; a preprocessing without a sub-table gets its
    # precision's values (the shipped fp32 gates hold for baked too: 5/5 top-5)
    assert table.get("fp32").min_cosine == DEFAULT_TOLERANCES["fp32"]["min_cosine"]
    assert table.get("fp32", "baked").min_top5_overlap == 5
    assert table.get("fp32", "baked").source.endswith(": fp32")


def test_missing_table_gives_the_builtin_defaults(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\nname = 'x'\n")
    table = load_tolerances(path)
    assert table.source == "built-in defaults"
    assert table.get("int8").min_cosine == DEFAULT_TOLERANCES["int8"]["min_cosine"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[tool.supercharge.tolerances.fp32]\nmin_cosin = 0.9\n", "unknown tolerance 'min_cosin'"),
        ("[tool.supercharge.tolerances.fp32.bakd]\nmin_cosine = 0.9\n", "not a preprocessing"),
        ("[tool.supercharge.tolerances.fp32]\nmin_cosine = 'high'\n", "must be a number"),
        ("[tool.supercharge.tolerances.fp32\n", "cannot read tolerances"),
    ],
)
def test_bad_tolerance_tables_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(SuperchargeError, match=match) as info:
        load_tolerances(path)
    assert "\n" not in str(info.value) and str(info.value).strip() == str(info.value)


def test_unknown_precision_and_missing_file_are_errors(tmp_path):
    with pytest.raises(SuperchargeError, match="no accuracy tolerances for precision 'fp8'"):
        load_tolerances(ROOT / "pyproject.toml").get("fp8")
    with pytest.raises(SuperchargeError, match="does not exist"):
        load_tolerances(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[tool.supercharge]\ntolerances = 1\n", "must be a table"),
        ("[tool.supercharge.tolerances.fp16]\nmin_top5_overlap = 4.5\n", "whole number"),
        ("[tool.supercharge.tolerances.fp16]\ntop1_margin = nan\n", "must be a number"),
        ("[tool.supercharge.tolerances.fp32.baked]\nmin_cosine = 'high'\n", "must be a number"),
        ("[tool.supercharge.tolerances.fp32.baked]\nmin_top5_overlap = true\n", "be a number"),
    ],
)
def test_values_that_would_crash_or_loosen_a_gate_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(SuperchargeError, match=match) as info:
        load_tolerances(path).get("fp32", "baked")
    assert "\n" not in str(info.value)
