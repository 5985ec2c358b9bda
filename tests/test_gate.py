"""The merge gate: in-run speedups, absolute medians with a significance check, and its errors."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest

from supercharge import gate
from supercharge.errors import SuperchargeError
from supercharge.floors import SpeedupFloor

MODEL = "tf_efficientnet_lite0"


def bench(backend, preprocess, precision, median, data=None, bs=1, timed="end-to-end"):
    case = f"{MODEL}-{backend}-{preprocess}-{precision}-bs{bs}"
    stats = {"median": median}
    if data is not None:
        stats["data"] = list(data)
    return {
        "name": f"test_end_to_end[{case}]",
        "fullname": f"perf/test_grid.py::test_end_to_end[{case}]",
        "stats": stats,
        "extra_info": {
            "case": case,
            "model": MODEL,
            "backend": backend,
            "preprocess": preprocess,
            "precision": precision,
            "batch_size": bs,
            "timed": timed,
            "device": "cpu",
        },
    }


def run(torch_s, ort_s, cpu="x86", **kw):
    return {
        "machine_info": {"cpu_model": cpu},
        "benchmarks": [
            bench("torch-cpu", "timm", "fp32", torch_s, kw.get("torch_data")),
            bench("ort-cpu", "baked", "fp32", ort_s, kw.get("ort_data")),
        ],
    }


def by_key(verdicts):
    return {v.key.split(" ")[0]: v for v in verdicts}


def test_a_machine_wide_slowdown_is_not_a_regression_of_the_speedup():
    # everything 30% slower (a busier runner): the ratio is unchanged
    verdicts = by_key(gate.compare(run(0.040, 0.010), run(0.052, 0.013)))
    assert verdicts[f"{MODEL}-ort-cpu-baked-fp32-bs1"].status == "ok"
    assert verdicts[f"{MODEL}-ort-cpu-baked-fp32-bs1"].baseline == pytest.approx(4.0)


def test_a_slower_backend_fails_the_speedup_gate():
    verdicts = by_key(gate.compare(run(0.040, 0.010), run(0.040, 0.0125)))
    v = verdicts[f"{MODEL}-ort-cpu-baked-fp32-bs1"]
    assert v.status == "regressed" and v.change == pytest.approx(0.25)
    assert "regressed" in v.line() and "+25.0%" in v.line()


def test_median_mode_needs_a_significant_slowdown_when_rounds_were_saved():
    noisy = np.linspace(0.005, 0.015, 30)  # median 10 ms, rounds spread +-5 ms
    shifted = noisy + 0.0012  # median +12%: over the 10% threshold, but within the noise
    slower = np.linspace(0.019, 0.021, 30)  # twice as slow, every round
    base = run(0.040, float(np.median(noisy)), ort_data=noisy)
    key = f"{MODEL}-ort-cpu-baked-fp32-bs1"
    slow = by_key(gate.compare(base, run(0.04, 0.02, ort_data=slower), stat="median"))[key]
    assert slow.status == "regressed" and slow.change == pytest.approx(1.0)
    noise = run(0.04, float(np.median(shifted)), ort_data=shifted)
    verdict = by_key(gate.compare(base, noise, stat="median"))[key]
    assert verdict.change == pytest.approx(0.12)
    assert verdict.status == "ok" and "not significant" in verdict.note
    # without saved rounds there is nothing to test significance on: the threshold decides
    bare = by_key(gate.compare(run(0.04, 0.010), run(0.04, 0.0112), stat="median"))[key]
    assert bare.status == "regressed"


def test_missing_and_new_cases_are_named():
    current = run(0.040, 0.010)
    current["benchmarks"] = [*current["benchmarks"][:1], bench("ort-cpu", "numpy", "fp32", 0.02)]
    verdicts = by_key(gate.compare(run(0.040, 0.010), current))
    missing = verdicts[f"{MODEL}-ort-cpu-baked-fp32-bs1"]
    new = verdicts[f"{MODEL}-ort-cpu-numpy-fp32-bs1"]
    assert missing.status == "missing" and new.status == "new"
    # the one side's value is shown, not "- -> -": the speedup each run measured
    assert missing.baseline == pytest.approx(4.0) and missing.current is None
    assert new.current == pytest.approx(2.0) and new.baseline is None
    assert "-> 2 " in new.line() and "not in the baseline run" in new.line()
    by_median = by_key(gate.compare(run(0.040, 0.010), current, stat="median"))
    assert by_median[f"{MODEL}-ort-cpu-numpy-fp32-bs1"].current == pytest.approx(0.02)


def test_machine_differences_are_reported():
    assert gate.machine_differences(run(1, 1, cpu="a"), run(1, 1, cpu="b")) == ["cpu_model: a -> b"]
    graphs = run(1, 1, cpu="a")
    graphs["machine_info"]["ort_cuda_graph"] = True  # --cuda-graph on one side only
    assert gate.machine_differences(run(1, 1, cpu="a"), graphs) == ["ort_cuda_graph: None -> True"]


def test_load_run_reads_a_file_or_the_newest_in_a_folder(tmp_path):
    """Newest by modification time, not by name: a run saved later under a name that sorts
    first (another counter, a branch name) is still the one a folder stands for."""
    folder = tmp_path / ".benchmarks" / "Linux-CPython-3.12-64bit"
    folder.mkdir(parents=True)
    older = folder / "0002_old.json"
    older.write_text(json.dumps(run(0.04, 0.01)))
    os.utime(older, (1_000_000_000, 1_000_000_000))
    newest = folder / "0001_new.json"
    newest.write_text(json.dumps(run(0.04, 0.02)))
    assert gate.load_run(tmp_path / ".benchmarks")["_path"] == str(newest)
    assert gate.load_run(older)["_path"] == str(older)  # a file is read as given


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "is not readable JSON"),
        ('{"rows": []}', "is not a pytest-benchmark run"),
    ],
)
def test_bad_run_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SuperchargeError, match=message) as err:
        gate.load_run(path)
    assert "\n" not in str(err.value) and "run.json" in str(err.value)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SuperchargeError, match="holds no pytest-benchmark JSON"):
        gate.load_run(tmp_path)


def test_gate_cli_exit_codes(tmp_path, run_cli):
    base, same, slow = tmp_path / "b.json", tmp_path / "s.json", tmp_path / "r.json"
    base.write_text(json.dumps(run(0.040, 0.010)))
    same.write_text(json.dumps(run(0.044, 0.011)))
    slow.write_text(json.dumps(run(0.040, 0.020)))
    code, out, _ = run_cli("gate", base, same)
    assert code == 0 and "0 failing: 2 compared" in out
    code, out, _ = run_cli("gate", base, slow)
    assert code == 1 and f"regressed   {MODEL}-ort-cpu-baked-fp32-bs1" in out
    code, out, _ = run_cli("gate", base, slow, "--max-slowdown", "150")
    assert code == 0
    code, _, err = run_cli("gate", base, tmp_path / "nope.json")
    assert code == 2 and err.count("\n") == 1 and "nope.json: no such file" in err


def test_a_folder_gives_its_newest_regular_json_file(tmp_path):
    """A dangling link or a folder named *.json is not a run: skipped, not a traceback."""
    (tmp_path / "dangling.json").symlink_to(tmp_path / "gone.json")
    (tmp_path / "folder.json").mkdir()
    run_file = tmp_path / "0001_run.json"
    run_file.write_text(json.dumps(run(0.04, 0.01)))
    assert gate.load_run(tmp_path)["_path"] == str(run_file)


def test_gate_cli_refuses_a_run_compared_with_itself(tmp_path, run_cli):
    """Two folders resolve to the same newest file, or one file is named twice: comparing a run
    with itself always passes, so it is an input error, not a pass."""
    folder = tmp_path / ".benchmarks"
    folder.mkdir()
    path = folder / "0001_main.json"
    path.write_text(json.dumps(run(0.040, 0.010)))
    for baseline, current in [(path, path), (folder, folder), (folder, path)]:
        code, _, err = run_cli("gate", baseline, current)
        assert code == 2 and err.count("\n") == 1
        assert "BASELINE and CURRENT are the same file" in err and "0001_main.json" in err


def test_gate_output_cut_short_by_its_reader_keeps_the_exit_status(tmp_path):
    """`supercharge gate A B | head -1`: the reader leaves, the verdict stays the exit status
    (a passing gate must not read as exit 1, a regression), with no traceback."""
    import subprocess
    import sys

    base, same, slow = tmp_path / "b.json", tmp_path / "s.json", tmp_path / "r.json"
    base.write_text(json.dumps(run(0.040, 0.010)))
    same.write_text(json.dumps(run(0.044, 0.011)))
    slow.write_text(json.dumps(run(0.040, 0.020)))
    code = "import sys; from supercharge.cli import main; sys.exit(main(sys.argv[1:]))"
    # block-buffered, as stdout to a pipe is by default: the lines meet the gone reader late
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for current, expected in [(same, 0), (slow, 1)]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "gate", str(base), str(current)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        proc.stdout.close()  # the reader is gone before the first line
        err = proc.stderr.read().decode()
        assert proc.wait() == expected and err == ""


def test_an_unpaired_gpu_case_is_judged_against_the_gpu_baseline():
    """A case without a paired speedup falls back to its run's baseline row of the same device:
    an ort-cuda case against torch-cuda, never against the (slower) torch-cpu row."""
    cuda_case = bench("ort-cuda", "baked", "fp32", 0.002)
    cuda_case["extra_info"]["device"] = "cuda:0"
    cuda_base = bench("torch-cuda", "timm", "fp32", 0.010)
    cuda_base["extra_info"]["device"] = "cuda:0"
    data = run(0.040, 0.010)
    data["benchmarks"] += [cuda_base, cuda_case]
    (v,) = gate.floor_verdicts(data, [SpeedupFloor("ort-cuda-baked-fp32-bs1", 4.0)])
    assert v.current == pytest.approx(5.0) and v.status == "ok"  # 10 ms / 2 ms, not 40 / 2


def test_a_case_interrupted_mid_measurement_is_missing_not_judged(tmp_path, run_cli):
    """pytest-benchmark saves the case a Ctrl-C cut short; its "complete" flag is still False,
    so the gate leaves it out: missing (a failure unless --allow-missing), never "ok"."""
    base, cut = tmp_path / "b.json", tmp_path / "c.json"
    base.write_text(json.dumps(run(0.040, 0.010)))
    interrupted = run(0.040, 0.010)
    interrupted["benchmarks"][1]["extra_info"]["complete"] = False
    cut.write_text(json.dumps(interrupted))
    assert len(gate.load_run(cut)["benchmarks"]) == 1
    code, out, _ = run_cli("gate", base, cut, "--stat", "median")
    assert code == 1 and f"missing     {MODEL}-ort-cpu-baked-fp32-bs1" in out


def test_the_paired_speedup_is_judged_where_the_run_recorded_it():
    # the baseline's own rows moved (the machine drifted between cases) but the speedups timed
    # around the case held: no regression; and a fallen paired speedup is one
    base, cur = run(0.040, 0.010), run(0.060, 0.010)
    base["benchmarks"][1]["extra_info"]["paired_speedup"] = 4.0
    cur["benchmarks"][1]["extra_info"]["paired_speedup"] = 3.9
    v = by_key(gate.compare(base, cur))[f"{MODEL}-ort-cpu-baked-fp32-bs1"]
    assert v.status == "ok" and v.baseline == 4.0 and v.current == 3.9
    cur["benchmarks"][1]["extra_info"]["paired_speedup"] = 3.0
    v = by_key(gate.compare(base, cur))[f"{MODEL}-ort-cpu-baked-fp32-bs1"]
    assert v.status == "regressed" and v.change == pytest.approx(1 / 3)


def with_paired(r, speedup):
    r["benchmarks"][1]["extra_info"]["paired_speedup"] = speedup
    return r


def test_speedup_floors_judge_the_paired_speedup_of_matching_end_to_end_cases():
    # the baseline's own row says 4.0x, the paired speedup timed around the case 3.1x: 3.1 counts
    current = with_paired(run(0.040, 0.010), 3.1)
    model_alone = bench("ort-cpu", "baked", "fp32", 0.001, timed="model")
    model_alone["extra_info"]["paired_speedup"] = 40.0  # only end-to-end cases are held
    current["benchmarks"].append(model_alone)
    verdicts = gate.floor_verdicts(
        current,
        [SpeedupFloor("ort-cpu-baked-fp32-bs1", 3.0), SpeedupFloor("ort-cpu-baked-*-bs1", 4.0)],
    )
    assert [(v.key, v.status, v.current) for v in verdicts] == [
        (f"{MODEL}-ort-cpu-baked-fp32-bs1 [end-to-end]", "ok", 3.1),
        (f"{MODEL}-ort-cpu-baked-fp32-bs1 [end-to-end]", "below-target", 3.1),
    ]
    assert "target 4x" in verdicts[1].line()


def test_a_speedup_floor_that_matches_no_case_fails_rather_than_passing_empty():
    (v,) = gate.floor_verdicts(run(0.040, 0.010), [SpeedupFloor("ort-cuda-*", 2.0)])
    assert v.status == "unmatched" and v.current is None


def test_speedup_floors_on_a_run_without_its_baseline_say_so(tmp_path, run_cli):
    """The case is there but the PyTorch baseline was filtered out of the grid: not "no case
    matches" (exit 1) but an input the gate cannot judge (exit 2), as for two runs."""
    no_baseline = run(0.040, 0.010)
    no_baseline["benchmarks"] = no_baseline["benchmarks"][1:]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(no_baseline))
    code, _, err = run_cli("gate", path, "--min-speedup", "ort-cpu-baked-fp32-bs1=1")
    assert code == 2 and err.count("\n") == 1
    assert "has no speedups to hold to a floor" in err and "baseline rows" in err
    # some cases have a speedup, the matching one does not (its batch size's baseline is absent)
    mixed = run(0.040, 0.010)
    mixed["benchmarks"].append(bench("ort-cpu", "baked", "fp32", 0.05, bs=8))
    (v,) = gate.floor_verdicts(mixed, [SpeedupFloor("ort-cpu-*-bs8", 2.0)])
    assert v.status == "unmatched" and "1 matching lack their baseline" in v.line()


def test_gate_cli_holds_one_run_to_its_floors(tmp_path, run_cli):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(with_paired(run(0.040, 0.010), 3.1)))
    code, out, _ = run_cli("gate", path, "--min-speedup", "ort-cpu-baked-fp32-bs1=3")
    assert code == 0 and "0 failing: 1 held to speedup floors" in out
    code, out, _ = run_cli("gate", path, "--min-speedup", "ort-cpu-baked-fp32-bs1=4")
    assert code == 1 and f"below-target {MODEL}-ort-cpu-baked-fp32-bs1" in out
    # unmatched floors fail even with --allow-missing (which is about cases of BASELINE)
    code, out, _ = run_cli("gate", path, "--min-speedup", "ort-trt-*=2", "--allow-missing")
    assert code == 1 and "unmatched" in out
    code, _, err = run_cli("gate", path)
    assert code == 2 and err.count("\n") == 1 and "CURRENT alone with --min-speedup" in err
    code, _, err = run_cli("gate", path, "--min-speedup", "ort-cpu")
    assert code == 2 and err.count("\n") == 1 and "--min-speedup 'ort-cpu'" in err


def test_gate_cli_compares_and_holds_floors_in_one_call(tmp_path, run_cli):
    base, cur = tmp_path / "b.json", tmp_path / "c.json"
    base.write_text(json.dumps(with_paired(run(0.040, 0.010), 4.0)))
    cur.write_text(json.dumps(with_paired(run(0.040, 0.010), 3.9)))
    code, out, _ = run_cli("gate", base, cur, "--min-speedup", "ort-cpu-baked-fp32-bs1=4")
    assert code == 1  # within 10% of the last run, but below the floor
    assert "ok          " in out and "below-target" in out
    assert "1 failing: 2 compared (max slowdown 10%), 1 held to speedup floors" in out


def test_gate_cli_reads_floors_from_a_pyproject(tmp_path, run_cli):
    path, pyproject = tmp_path / "run.json", tmp_path / "pyproject.toml"
    path.write_text(json.dumps(with_paired(run(0.040, 0.010), 3.1)))
    pyproject.write_text(
        "[tool.supercharge.speedup_floors]\n"
        '"ort-cpu-baked-fp32-bs1" = 3.0\n'
        '"eva02_large_patch14_448-ort-cpu-baked-fp32-bs1" = 1.5\n'  # another model: not run
    )
    code, out, _ = run_cli("gate", path, "--floors", pyproject)
    assert code == 0, out
    assert f"ok          {MODEL}-ort-cpu-baked-fp32-bs1" in out
    assert "not-run     eva02_large_patch14_448-ort-cpu-baked-fp32-bs1" in out
    assert "0 failing: 1 held to speedup floors" in out
    pyproject.write_text('[tool.supercharge.speedup_floors]\n"ort-cpu-baked-*" = 3.5\n')
    code, out, _ = run_cli("gate", path, "--floors", pyproject)
    assert code == 1 and "below-target" in out
    pyproject.write_text("[tool.supercharge.tolerances.fp32]\nmin_cosine = 0.9\n")
    code, _, err = run_cli("gate", path, "--floors", pyproject)
    assert code == 2 and err.count("\n") == 1 and "has no [tool.supercharge.speedup_floors]" in err


def test_gate_cli_floors_default_to_the_nearest_pyproject(tmp_path, run_cli, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(with_paired(run(0.040, 0.010), 3.1)))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.supercharge.speedup_floors]\n"ort-cpu-baked-fp32-bs1" = 4\n'
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli("gate", path, "--floors")
    assert code == 1 and f"below-target {MODEL}-ort-cpu-baked-fp32-bs1" in out
    # before the run: the run is not taken for the optional pyproject path
    code, out, _ = run_cli("gate", "--floors", path)
    assert code == 1 and f"below-target {MODEL}-ort-cpu-baked-fp32-bs1" in out
    code, out, _ = run_cli("gate", "--floors", tmp_path / "pyproject.toml", path)
    assert code == 1 and f"below-target {MODEL}-ort-cpu-baked-fp32-bs1" in out
    floors = tmp_path / "FLOORS.TOML"  # any name that is not a run's is the floors file
    floors.write_bytes((tmp_path / "pyproject.toml").read_bytes())
    code, out, _ = run_cli("gate", "--floors", floors, path)
    assert code == 1 and f"below-target {MODEL}-ort-cpu-baked-fp32-bs1" in out
    code, _, err = run_cli("gate", "--floo", path)  # no abbreviations to slip past
    assert code == 2 and "unrecognized arguments: --floo" in err


def test_gate_cli_refuses_to_pass_a_run_whose_floors_judged_nothing(tmp_path, run_cli):
    """Only file floors (which may name other models) and no case matching any: a run whose
    every case was skipped, or another project's run, would pass with "0 failing: 0"."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.supercharge.speedup_floors]\n"ort-cpu-baked-fp32-bs1" = 4\n')
    empty, other = tmp_path / "empty.json", tmp_path / "other.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    other.write_text(json.dumps(with_paired(run(0.040, 0.010), 3.1)))
    pyproject_other = tmp_path / "other.toml"
    pyproject_other.write_text('[tool.supercharge.speedup_floors]\n"resnet50-*" = 2\n')
    for path, floors in ((empty, pyproject), (other, pyproject_other)):
        code, out, err = run_cli("gate", path, "--floors", floors)
        assert code == 2 and out == "" and err.count("\n") == 1, (out, err)
        assert f"{path}: no end-to-end case with a speedup matches any floor of {floors}" in err
        assert "nothing was judged" in err


def test_gate_cli_names_the_runs_when_given_too_many(tmp_path, run_cli):
    paths = [tmp_path / f"{n}_main.json" for n in ("0001", "0002")] + [tmp_path / "0003_pr.json"]
    for path in paths:
        path.write_text(json.dumps(run(0.040, 0.010)))
    code, out, err = run_cli("gate", *paths)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"gate got 3 runs ({paths[0]}, {paths[1]}, {paths[2]}): give one BASELINE" in err


ORT = f"test_end_to_end[{MODEL}-ort-cpu-baked-fp32-bs1]"


def _set(path: str, value):
    """A change to the run's ORT entry: `path` is dotted keys under it; value DELETE removes."""

    def mutate(r):
        *parents, last = path.split(".")
        node = r["benchmarks"][1]
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


DELETE = object()


def _replace_entry(r):
    r["benchmarks"][1] = "not a benchmark"


def _top(key, value):
    def mutate(r):
        r[key] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_replace_entry, "benchmark #1 is not a JSON object"),
        (_set("name", DELETE), "benchmark #1 has no name"),
        (_set("fullname", 7), f"benchmark {ORT!r} has a fullname that is not text"),
        (_set("stats", None), f"benchmark {ORT!r} has no stats.median that is a positive"),
        (_set("stats.median", DELETE), "has no stats.median that is a positive"),
        (_set("stats.median", 0), "has no stats.median that is a positive"),
        (_set("stats.median", -0.01), "has no stats.median that is a positive"),
        (_set("stats.median", "0.01"), "has no stats.median that is a positive"),
        (_set("stats.median", True), "has no stats.median that is a positive"),
        (_set("stats.data", ["fast"]), "has stats.data that is not a list"),
        (_set("stats.data", 0.01), "has stats.data that is not a list"),
        (_set("extra_info", ["case"]), "has extra_info that is not a JSON object"),
        (_set("extra_info.paired_speedup", "abc"), "paired_speedup that is not a positive"),
        (_set("extra_info.paired_speedup", 0), "paired_speedup that is not a positive"),
        (_set("extra_info.case", DELETE), "has extra_info.timed but no extra_info.case"),
        (_set("extra_info.backend", 3), "has extra_info.backend that is not text"),
        (_set("extra_info.model", ["m"]), "has extra_info.model that is not text"),
        (_set("extra_info.batch_size", "1"), "has extra_info.batch_size that is not an integer"),
        (_top("machine_info", ["x86"]), "machine_info is not a JSON object"),
        (_top("supercharge", "pace"), "supercharge is not a JSON object"),
    ],
)
def test_a_malformed_benchmark_entry_is_refused_at_load(tmp_path, mutate, message):
    # each of these used to surface mid-comparison as a KeyError, AttributeError, TypeError,
    # ValueError or ZeroDivisionError
    r = run(0.040, 0.010, ort_data=[0.01] * 5)
    mutate(r)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(r))
    with pytest.raises(SuperchargeError, match=re.escape(message)) as err:
        gate.load_run(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert "not a pytest-benchmark JSON from this suite" in text and "rerun the suite" in text


def test_plain_pytest_benchmark_entries_still_load(tmp_path):
    # entries of other suites (no extra_info, or an empty one) are compared by name, not refused
    path = tmp_path / "run.json"
    entries = [
        {"name": "test_a", "stats": {"median": 1, "data": [0.0, 1, 2]}},
        {"name": "test_b", "fullname": "t.py::test_b", "stats": {"median": 0.5}, "extra_info": {}},
    ]
    path.write_text(json.dumps({"benchmarks": entries, "machine_info": None}))
    loaded = gate.load_run(path)
    verdicts = gate.compare(loaded, loaded, stat="median")
    assert [(v.key, v.status) for v in verdicts] == [("t.py::test_b", "ok"), ("test_a", "ok")]


@pytest.mark.parametrize("percent", [math.nan, math.inf, -math.inf, -1.0])
def test_compare_refuses_a_max_slowdown_that_would_disarm_it(percent):
    with pytest.raises(SuperchargeError, match="give a finite, non-negative percent"):
        gate.compare(run(0.04, 0.01), run(0.04, 0.02), max_slowdown=percent)


def test_runs_that_share_no_case_cannot_be_compared():
    base, cur = run(0.040, 0.010), run(0.040, 0.010)
    base["_path"], cur["_path"] = "base.json", "cur.json"
    for b in cur["benchmarks"]:
        b["extra_info"]["case"] = b["extra_info"]["case"].replace(MODEL, "resnet50")
    verdicts = gate.compare(base, cur)
    assert {v.status for v in verdicts} == {"missing", "new"}
    with pytest.raises(SuperchargeError, match=re.escape("base.json and cur.json share no case")):
        gate.check_comparable(verdicts, base, cur)


def test_runs_without_their_pytorch_baseline_suggest_the_median_statistic():
    base, cur = run(0.040, 0.010), run(0.040, 0.010)
    base["_path"], cur["_path"] = "base.json", "cur.json"
    del base["benchmarks"][0], cur["benchmarks"][0]  # only the ORT case, no torch timm fp32 row
    verdicts = gate.compare(base, cur)
    assert [v.status for v in verdicts] == ["no-baseline"]
    with pytest.raises(SuperchargeError, match="neither run has PyTorch eager") as err:
        gate.check_comparable(verdicts, base, cur)
    assert "use --stat median" in str(err.value)
    gate.check_comparable(gate.compare(base, cur, stat="median"), base, cur)  # median works
    with_torch = run(0.040, 0.010)  # the current run has its baseline row: name the other
    with_torch["_path"] = "cur.json"
    with pytest.raises(SuperchargeError, match=re.escape("base.json has no PyTorch eager")):
        gate.check_comparable(gate.compare(base, with_torch), base, with_torch)


def test_a_shared_case_without_a_speedup_is_not_passed_unjudged(tmp_path, run_cli):
    """A GPU runner whose torch cannot use CUDA times ORT GPU cases unpaired and without a
    torch-cuda row: with the CPU cases compared, a 10x slower ort-cuda case must not pass."""

    def gpu_run(ort_cuda_s):
        r = with_paired(run(0.040, 0.010), 4.0)
        cuda_case = bench("ort-cuda", "baked", "fp32", ort_cuda_s)
        cuda_case["extra_info"]["device"] = "cuda:0"
        r["benchmarks"].append(cuda_case)
        return r

    base, cur = tmp_path / "b.json", tmp_path / "c.json"
    base.write_text(json.dumps(gpu_run(0.002)))
    cur.write_text(json.dumps(gpu_run(0.020)))
    code, out, err = run_cli("gate", base, cur)
    assert code == 2 and err.count("\n") == 1 and out == ""
    assert "1 cases without a speedup" in err and "ort-cuda-baked-fp32-bs1" in err
    assert "--stat median" in err
    code, out, _ = run_cli("gate", base, cur, "--stat", "median")
    assert code == 1 and f"regressed   {MODEL}-ort-cuda-baked-fp32-bs1" in out


def test_a_speedup_just_below_its_floor_never_prints_as_the_floor():
    (v,) = gate.floor_verdicts(
        with_paired(run(0.040, 0.010), 3.9996), [SpeedupFloor("ort-cpu-baked-fp32-bs1", 4.0)]
    )
    assert v.status == "below-target" and ": 4 -> 3.9996 " in v.line()


def test_machine_differences_name_the_baselines_own_libraries():
    """timm (the baseline's preprocessing and model), CUDA and cuDNN move every paired speedup."""
    base, cur = run(1, 1), run(1, 1)
    base["machine_info"].update(timm="1.0.9", cudnn=90100, cuda_runtime="12.4")
    cur["machine_info"].update(timm="1.0.15", cudnn=90800, cuda_runtime="12.8")
    assert gate.machine_differences(base, cur) == [
        "cuda_runtime: 12.4 -> 12.8",
        "cudnn: 90100 -> 90800",
        "timm: 1.0.9 -> 1.0.15",
    ]


def test_a_pace_change_during_the_baseline_run_is_named():
    base, cur = run(0.04, 0.01), run(0.04, 0.01)
    base["supercharge"] = {"pace": {"start_ms": 10.0, "during_ms": [16.0], "end_ms": 10.0}}
    cur["supercharge"] = {"pace": {"start_ms": 12.0, "during_ms": [12.0], "end_ms": 12.0}}
    notes = gate.pace_notes(cur, base)
    assert any("during the baseline run: +60%" in n and "rerun" in n for n in notes)


def test_a_file_floor_matching_a_case_without_its_baseline_fails():
    mixed = with_paired(run(0.040, 0.010), 4.2)
    del mixed["benchmarks"][0]  # the paired case keeps its speedup; bs8 has none
    mixed["benchmarks"].append(bench("ort-cpu", "baked", "fp32", 0.05, bs=8))
    floors = [SpeedupFloor("ort-cpu-*-bs8", 2.0), SpeedupFloor("resnet50-*", 2.0)]
    statuses = [v.status for v in gate.floor_verdicts(mixed, floors, required=False)]
    assert statuses == ["unmatched", "not-run"]  # this run's case fails; another model's is not run


def test_a_noisy_case_is_named_in_its_verdict_which_it_does_not_change():
    """As the report marks it (noisy): the case's rounds or its paired baseline spread more
    than 10% of their median, in either run."""
    base, cur = run(0.040, 0.010), run(0.040, 0.010)
    base["benchmarks"][1]["stats"]["iqr"] = 0.0005  # 5%: steady
    cur["benchmarks"][1]["extra_info"].update(paired_baseline_s=0.04, paired_baseline_iqr_s=0.008)
    verdicts = {v.key: v for v in gate.compare(base, cur)}
    ort = verdicts[f"{MODEL}-ort-cpu-baked-fp32-bs1 [end-to-end]"]
    assert ort.status == "ok" and "noisy in current: rerun" in ort.line()
    assert "noisy" not in verdicts[f"{MODEL}-torch-cpu-timm-fp32-bs1 [end-to-end]"].line()
    base["benchmarks"][1]["stats"]["iqr"] = 0.002  # 20%
    (ort,) = [v for v in gate.compare(base, cur) if "ort-cpu" in v.key]
    assert "noisy in base and current: rerun" in ort.line()


@pytest.mark.parametrize(
    ("ort_s", "status", "shown"),
    [
        (0.011004, "regressed", "+10.04%"),  # past 10% by 0.04 points: never "+10.0%"
        (0.010 * 1.1, "ok", "+10.0%"),  # 10% is allowed, though 4 / (4 / 1.1) - 1 > 0.1
        (0.010996, "ok", "+10.0%"),  # below, rounded to the limit: still on its side
        (0.0125, "regressed", "+25.0%"),
    ],
)
def test_a_slowdown_prints_on_the_side_of_the_limit_it_was_judged(ort_s, status, shown):
    v = by_key(gate.compare(run(0.040, 0.010), run(0.040, ort_s), max_slowdown=0.10))[
        f"{MODEL}-ort-cpu-baked-fp32-bs1"
    ]
    assert v.status == status and f" {shown}  (" in v.line()


def _with_image(data, name, sha, width=8, height=6):
    return {
        **data,
        "supercharge": {"image": {"name": name, "width": width, "height": height, "sha256": sha}},
    }


def test_runs_that_timed_different_photos_are_not_compared(tmp_path, run_cli):
    """Preprocessing's cost follows the photo's size: a comparison across photos says nothing
    about the code, so it is input the gate cannot judge (exit 2), not a regression."""
    base = _with_image(run(0.040, 0.010), "coffee.png", "a" * 64, 600, 400)
    cur = _with_image(run(0.040, 0.010), "frame.jpg", "b" * 64)
    with pytest.raises(SuperchargeError, match=r"timed coffee\.png \(600x400, sha256 aaaaaaaa\)"):
        gate.check_same_image(base, cur)
    gate.check_same_image(base, _with_image(run(0.040, 0.011), "copy.png", "a" * 64))
    gate.check_same_image(base, run(0.040, 0.010))  # saved before photos were recorded
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "cur.json").write_text(json.dumps(cur))
    code, _, err = run_cli("gate", str(tmp_path / "base.json"), str(tmp_path / "cur.json"))
    assert code == 2 and "compare runs of the same --image" in err and len(err.splitlines()) == 1


def test_a_run_without_a_recorded_photo_is_compared_only_with_the_default_photo():
    """A run saved before photos were recorded timed coffee.png (600x400): set against a run
    that timed another photo, the comparison says nothing about the code either."""
    frame = _with_image(run(0.040, 0.010), "frame.jpg", "b" * 64)
    with pytest.raises(SuperchargeError, match=r"compare runs of the same --image"):
        gate.check_same_image(run(0.040, 0.010), frame)
    with pytest.raises(SuperchargeError, match=r"compare runs of the same --image"):
        gate.check_same_image(frame, run(0.040, 0.010))
    coffee = _with_image(run(0.040, 0.010), "coffee.png", "c" * 64, 600, 400)
    gate.check_same_image(run(0.040, 0.010), coffee)


def test_the_paired_speedup_follows_the_median_pytest_benchmark_stored():
    """The stored stats are the record (pytest-benchmark's table and --benchmark-compare read
    them): a case 50% slower there, its paired baseline unchanged, has lost 50% of its speedup,
    whatever ratio was cached beside it in extra_info."""
    base, cur = run(0.040, 0.010), run(0.040, 0.015)
    for r in (base, cur):
        r["benchmarks"][1]["extra_info"].update(paired_baseline_s=0.040, paired_speedup=4.0)
    v = by_key(gate.compare(base, cur))[f"{MODEL}-ort-cpu-baked-fp32-bs1"]
    assert v.status == "regressed" and v.current == pytest.approx(0.040 / 0.015)
    assert " +50.0%  (speedup" in v.line()
    (floor,) = gate.floor_verdicts(cur, [SpeedupFloor("ort-cpu-baked-fp32-bs1", 3.0)])
    assert floor.status == "below-target"  # 2.67x, as the report of that run says


def test_a_paired_baseline_that_is_not_seconds_is_refused_at_load(tmp_path):
    data = run(0.040, 0.010)
    data["benchmarks"][1]["extra_info"]["paired_baseline_s"] = "0.04"
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(SuperchargeError, match=r"extra_info\.paired_baseline_s"):
        gate.load_run(tmp_path / "r.json")


def test_machine_differences_name_the_libraries_on_the_timed_path():
    """Pillow resizes in the baseline's timm transform, numpy feeds the numpy path, onnx builds
    every exported graph: each moves the paired speedups, and machine_info records each."""
    base, cur = run(1, 1), run(1, 1)
    base["machine_info"].update(pillow="11.0.0", numpy="2.1.0", onnx="1.17.0")
    cur["machine_info"].update(pillow="12.1.0", numpy="2.3.0", onnx="1.19.0")
    assert gate.machine_differences(base, cur) == [
        "onnx: 1.17.0 -> 1.19.0",
        "pillow: 11.0.0 -> 12.1.0",
        "numpy: 2.1.0 -> 2.3.0",
    ]


def test_the_baselines_own_rows_say_the_speedup_cannot_judge_them():
    """PyTorch fp32 + timm is 1x by definition: a slower baseline passes the speedup gate (its
    cases' ratios even rise), so its verdict says how to judge it instead of a bare +0.0%."""
    base, cur = run(0.040, 0.010), run(0.060, 0.010)  # the baseline 50% slower
    verdicts = by_key(gate.compare(base, cur))
    line = verdicts[f"{MODEL}-torch-cpu-timm-fp32-bs1"].line()
    assert "the baseline itself" in line and "--stat median" in line
    assert "baseline itself" not in verdicts[f"{MODEL}-ort-cpu-baked-fp32-bs1"].line()


def test_a_malformed_saved_pace_is_not_recorded_not_a_crash(tmp_path, run_cli):
    """Exit 1 means a regression: a traceback on a run's pace (which never changes a verdict)
    would read as one in CI."""
    base, cur = tmp_path / "b.json", tmp_path / "c.json"
    base.write_text(json.dumps({**run(0.040, 0.010), "supercharge": {"pace": {"start_ms": 3.0}}}))
    bad = {**run(0.040, 0.010), "supercharge": {"pace": {"start_ms": 3.0, "end_ms": "x"}}}
    cur.write_text(json.dumps(bad))
    code, out, err = run_cli("gate", base, cur)
    assert (code, err) == (0, "") and "machine pace: not recorded in the current run" in out
