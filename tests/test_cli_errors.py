"""Bad command lines and bad gate inputs: one line on stderr naming the input, exit 2, never a
usage block or a traceback (exit 1 is kept for a case that regressed, fell short or is missing).
"""

from __future__ import annotations

import json

import pytest
from tests.test_gate import MODEL, bench, run

from supercharge.cli import main, parse_image_size
from supercharge.errors import SuperchargeError, WeightsUnavailableError
from supercharge.weights import MAX_SEED, WeightsSpec


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("supercharge: error: ")
    return lines[0]


def _save(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


# usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named", "command"),
    [
        (["gate", "a.json", "b.json", "--max-slowdown", "abc"], "'abc'", "gate"),
        (["gate", "a.json", "b.json", "--stat", "mean"], "'mean'", "gate"),
        (["gate", "a.json", "b.json", "--bogus"], "--bogus", "gate"),
        (["predict", "x.png", "--top", "x"], "'x'", "predict"),
        (["predict", "x.png", "--backend", "nope"], "'nope'", "predict"),
        (["predict"], "IMAGE", "predict"),
        (["export", "--skip", "fp16"], "'fp16'", "export"),
        (["bogus"], "'bogus'", None),
        ([], "command", None),
    ],
)
def test_a_usage_error_is_one_line_pointing_at_the_commands_help(run_cli, args, named, command):
    line = _one_line_error(*run_cli(*args))
    assert named in line
    assert line.endswith(f"; see supercharge{f' {command}' if command else ''} --help")


@pytest.mark.parametrize("args", [["--help"], ["gate", "--help"], ["predict", "-h"]])
def test_help_still_prints_in_full(capsys, args):
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    assert done.value.code == 0 and err == ""
    assert out.startswith("usage: supercharge") and len(out.splitlines()) > 5


# gate: the threshold ------------------------------------------------------------------------


@pytest.mark.parametrize("percent", ["nan", "inf", "1e400", "-inf", "-1"])
def test_a_max_slowdown_that_would_disarm_the_gate_is_refused(run_cli, tmp_path, percent):
    base = _save(tmp_path / "b.json", run(0.040, 0.010))
    slow = _save(tmp_path / "r.json", run(0.040, 0.020))  # a 100% slowdown
    line = _one_line_error(*run_cli("gate", base, slow, f"--max-slowdown={percent}"))
    assert "--max-slowdown" in line and "give a finite, non-negative percent" in line


def test_a_run_after_an_option_is_still_a_run(run_cli, tmp_path):
    """`gate BASE --max-slowdown 10 CURRENT` compares the two, as with the options last."""
    base = _save(tmp_path / "b.json", run(0.040, 0.010))
    slow = _save(tmp_path / "r.json", run(0.040, 0.020))  # a 100% slowdown
    code, out, err = run_cli("gate", base, "--max-slowdown", "10", slow)
    assert (code, err) == (1, "") and "regressed" in out
    code, _, err = run_cli("gate", base, "--nope", slow)
    assert code == 2 and "unrecognized arguments: --nope" in err


@pytest.mark.parametrize("ratio", ["nan", "inf", "1e400", "0", "-2"])
def test_a_speedup_floor_must_be_a_finite_positive_ratio(run_cli, tmp_path, ratio):
    path = _save(tmp_path / "run.json", run(0.040, 0.010))
    text = f"ort-cpu-baked-fp32-bs1={ratio}"
    line = _one_line_error(*run_cli("gate", path, "--min-speedup", text))
    assert f"--min-speedup {text!r}" in line


# gate: runs that cannot be compared ---------------------------------------------------------


def _other_model(r):
    for b in r["benchmarks"]:
        b["extra_info"]["case"] = b["extra_info"]["case"].replace(MODEL, "resnet50")
    return r


@pytest.mark.parametrize("extra", [[], ["--allow-missing"]])
def test_runs_that_share_no_case_are_bad_input_not_a_regression(run_cli, tmp_path, extra):
    base = _save(tmp_path / "base.json", run(0.040, 0.010))
    other = _save(tmp_path / "disjoint.json", _other_model(run(0.040, 0.010)))
    code, out, err = run_cli("gate", base, other, *extra)
    line = _one_line_error(code, out, err)
    assert f"{base} and {other} share no case" in line and "same grid" in line
    assert out == ""  # no half-printed report before the error


def test_runs_without_a_pytorch_baseline_suggest_the_median_statistic(run_cli, tmp_path):
    ort_only = run(0.040, 0.010)
    del ort_only["benchmarks"][0]  # no torch timm fp32 row: no speedup to judge
    base = _save(tmp_path / "base.json", ort_only)
    cur = _save(tmp_path / "cur.json", ort_only)
    line = _one_line_error(*run_cli("gate", base, cur))
    assert f"{base} and {cur} share cases" in line and "neither run has" in line
    assert "--stat median" in line
    code, out, _ = run_cli("gate", base, cur, "--stat", "median")
    assert code == 0 and "0 failing: 1 compared" in out


# gate: entries the loader refuses -----------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "label"),
    [
        ({"stats": {"median": 0.01}}, "benchmark #1 has no name"),
        ("oops", "benchmark #1 is not a JSON object"),
        ({"name": "t", "stats": {"median": 0}}, "benchmark 't' has no stats.median"),
        (
            {"name": "t", "stats": {"median": 1}, "extra_info": 3},
            "benchmark 't' has extra_info that is not a JSON object",
        ),
        (
            {"name": "t", "stats": {"median": 1}, "extra_info": {"timed": "model"}},
            "benchmark 't' has extra_info.timed but no extra_info.case",
        ),
    ],
)
def test_a_malformed_run_is_one_line_naming_file_and_entry(run_cli, tmp_path, entry, label):
    r = run(0.040, 0.010)
    r["benchmarks"][1] = entry
    bad = _save(tmp_path / "bad.json", r)
    good = _save(tmp_path / "good.json", run(0.040, 0.010))
    for args in ([good, bad], [bad, good], [bad, "--min-speedup", "ort-cpu-*=2"]):
        line = _one_line_error(*run_cli("gate", *args))
        assert f"{bad}: {label}" in line and "not a pytest-benchmark JSON from this suite" in line


def test_a_string_median_is_refused_before_the_median_comparison(run_cli, tmp_path):
    r = run(0.040, 0.010)
    r["benchmarks"][1]["stats"]["median"] = "0.010"
    bad = _save(tmp_path / "bad.json", r)
    good = _save(tmp_path / "good.json", run(0.040, 0.010))
    line = _one_line_error(*run_cli("gate", good, bad, "--stat", "median"))
    assert f"{bad}: benchmark 'test_end_to_end[{MODEL}-ort-cpu-baked-fp32-bs1]'" in line


def test_a_bad_paired_speedup_is_refused(run_cli, tmp_path):
    r = run(0.040, 0.010)
    r["benchmarks"].append(bench("ort-cpu", "numpy", "fp32", 0.02))
    r["benchmarks"][2]["extra_info"]["paired_speedup"] = "abc"
    bad = _save(tmp_path / "bad.json", r)
    line = _one_line_error(*run_cli("gate", bad, bad))
    assert f"{MODEL}-ort-cpu-numpy-fp32-bs1]' has extra_info.paired_speedup" in line


# non-ASCII digits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["random:²", "random:٣", "random:-1", "random:1.5", "random:", "random:x"]
)
def test_a_seed_must_be_ascii_digits(text):
    if text == "random:":
        assert WeightsSpec.parse(text) == WeightsSpec("random")  # the default seed
        return
    with pytest.raises(WeightsUnavailableError, match="the seed must be an integer"):
        WeightsSpec.parse(text)


def test_a_seed_must_fit_torch_manual_seed():
    assert WeightsSpec.parse(f"random:{MAX_SEED}").seed == MAX_SEED
    for seed in (str(MAX_SEED + 1), "9" * 5000):  # int() refuses over 4300 digits
        with pytest.raises(WeightsUnavailableError, match="the seed must be an integer"):
            WeightsSpec.parse(f"random:{seed}")


def test_a_non_ascii_seed_is_a_one_line_error(run_cli, tmp_path):
    artifacts = tmp_path / "artifacts"
    args = ["export", "--model", "test_resnet", "--artifact-dir", artifacts]
    line = _one_line_error(*run_cli(*args, "--weights", "random:²"))
    assert "--weights 'random:²': the seed must be an integer" in line


@pytest.mark.parametrize("text", ["²x3", "3x²", "٤٨٠x640", f"{'9' * 5000}x3"])
def test_a_non_ascii_image_size_is_refused(text):
    with pytest.raises(SuperchargeError, match="give HEIGHTxWIDTH"):
        parse_image_size(text)


def test_a_non_ascii_image_size_is_a_one_line_error(run_cli, tmp_path):
    args = ["export", "--model", "test_resnet", "--weights", "random"]
    code, out, err = run_cli(*args, "--artifact-dir", tmp_path / "a", "--image-size", "²x3")
    line = _one_line_error(code, out, err)
    assert "--image-size '²x3': give HEIGHTxWIDTH" in line and out == ""


def test_an_empty_artifact_dir_is_refused_not_the_current_folder(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        "export", "--artifact-dir", "", "--model", "test_resnet", "--weights", "random"
    )
    assert code == 2 and out == "" and list(tmp_path.iterdir()) == []
    assert err.strip() == (
        "supercharge: error: argument --artifact-dir: '' is empty: pass a folder, or leave the "
        "option out for SUPERCHARGE_ARTIFACT_DIR or the per-user cache; see supercharge export "
        "--help"
    )


def test_ctrl_c_is_one_line_and_exit_130(run_cli, monkeypatch):
    import supercharge.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(supercharge.cli.COMMANDS, "export", interrupted)
    code, _, err = run_cli("export")
    assert code == 130 and err.strip() == "supercharge: export interrupted"


def test_running_out_of_memory_is_one_line_and_other_errors_stay_bugs(run_cli, monkeypatch, coffee):
    """predict runs every image in one batch: an allocation failure there is the user's batch
    being too large (one line naming it, exit 2); any other exception is a bug and keeps its
    traceback."""
    from tests.test_errors import ort_allocation_failure

    import supercharge.cli

    def no_memory(args):
        ort_allocation_failure()

    monkeypatch.setitem(supercharge.cli.COMMANDS, "predict", no_memory)
    code, out, err = run_cli("predict", coffee, coffee)
    assert code == 2 and out == ""
    assert err.strip() == (
        "supercharge: error: predict of 2 images in one batch does not fit in this machine's"
        " memory (Failed to allocate memory for requested buffer of size 17592186044416): pass"
        " fewer"
    )

    def bug(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setitem(supercharge.cli.COMMANDS, "predict", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_cli("predict", coffee)


# supercharge cache -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--prune", "-1"], "'-1'"),
        (["--prune", "soon"], "'soon'"),
        (["--prune", "inf"], "'inf'"),
        (["--dry-run"], "--dry-run"),
    ],
)
def test_cache_refuses_bad_arguments_in_one_line(run_cli, tmp_path, args, named):
    line = _one_line_error(*run_cli("cache", "--artifact-dir", tmp_path, *args))
    assert named in line and ("--prune DAYS" in line or "days >= 0" in line)
