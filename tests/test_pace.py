"""The machine's pace: measured for real, carried by runs, read by the report and the gate."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from supercharge.cases import Case, Combo
from supercharge.cli import main as cli_main
from supercharge.gate import pace_notes, run_pace
from supercharge.pace import SHIFT, Pace, describe_change, measure
from supercharge.report import END_TO_END, SuiteResults, Timing, write_report


def test_measure_times_the_workload_after_untimed_warm_ups_in_ms(monkeypatch):
    """A fake clock that moves 3 ms per run of the (real) workload: the median is exactly 3 ms,
    the five warm-up runs are not timed, and only the timed runs read the clock."""
    import onnxruntime as ort

    import supercharge.pace as pace_module

    now, runs, reads = [0.0], [], []
    real_run = ort.InferenceSession.run

    def run(self, *args, **kwargs):
        out = real_run(self, *args, **kwargs)
        runs.append(out[0])
        now[0] += 0.003
        return out

    def clock() -> float:
        reads.append(len(runs))
        return now[0]

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    monkeypatch.setattr(pace_module, "time", SimpleNamespace(perf_counter=clock))
    assert measure(runs=7) == pytest.approx(3.0)
    assert len(runs) == 5 + 7 and all(math.isfinite(float(np.ravel(r)[0])) for r in runs)
    assert reads[0] == 5 and len(reads) == 2 * 7  # the clock starts after the warm-ups


def test_change_is_end_over_start():
    assert Pace(2.0, 3.0).change() == pytest.approx(0.5)
    assert Pace(2.0).change() is None and Pace(2.0).mean_ms() == 2.0
    assert Pace(2.0, 3.0).mean_ms() == 2.5


def test_a_phase_in_the_middle_of_a_run_is_its_change():
    """Start and end agree, a probe between cases does not: the run is not steady."""
    pace = Pace(2.0).with_probe(2.1).with_probe(3.0).with_probe(2.2)
    pace = Pace(pace.start_ms, 2.05, pace.during_ms)
    assert pace.samples() == (2.0, 2.1, 3.0, 2.2, 2.05)
    assert pace.change() == pytest.approx(0.5) and pace.mean_ms() == pytest.approx(2.27)
    assert Pace(2.0, during_ms=(1.5, 2.2)).change() == pytest.approx(-0.25)  # faster counts too


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"start_ms": "fast"},
        {"start_ms": 0},
        {"start_ms": -1.0},
        ["start_ms"],
        {"start_ms": 2.0, "during_ms": ["x"]},
        {"start_ms": 2.0, "during_ms": [0.0]},
        {"start_ms": 2.0, "during_ms": 3},
        {"start_ms": 2.0, "end_ms": "x"},  # a saved run's end: the gate's input too
        {"start_ms": 2.0, "end_ms": [2.0]},
        {"start_ms": 2.0, "end_ms": 0},
        {"start_ms": 2.0, "end_ms": -3.0},
        {"start_ms": float("nan")},
        {"start_ms": 2.0, "during_ms": [float("inf")]},
    ],
)
def test_a_missing_or_malformed_saved_pace_reads_as_none(data):
    assert Pace.from_dict(data) is None


def test_a_saved_pace_round_trips():
    pace = Pace(2.5, 2.75, (2.6, 2.9))
    assert Pace.from_dict(json.loads(json.dumps(pace.as_dict()))) == pace
    assert Pace.from_dict({"start_ms": 2.5}) == Pace(2.5)


def test_a_small_change_is_steady_and_a_large_one_says_rerun():
    assert "steady" in describe_change(SHIFT / 2, "x") and "rerun" not in describe_change(0.01, "x")
    slower = describe_change(0.5, "during the run")
    assert "+50%" in slower and "slower" in slower and "rerun" in slower
    assert "faster" in describe_change(-0.3, "x")
    # near the threshold a decimal, so "+15%" never names a change beyond 15%
    assert "+15.2%" in describe_change(SHIFT + 0.002, "x") and "rerun" in describe_change(
        SHIFT + 0.002, "x"
    )
    assert "+14.8% (steady)" in describe_change(SHIFT - 0.002, "x")


def _timing() -> Timing:
    case = Case("m", Combo("torch-cpu", "timm", "fp32"), 1)
    return Timing(case, END_TO_END, median_s=0.01, iqr_s=0.0001, rounds=10)


def test_the_report_states_the_pace_and_flags_a_changed_machine(tmp_path):
    results = SuiteResults(timings=[_timing()], pace=Pace(2.0, 3.0))
    write_report(results, tmp_path)
    text = (tmp_path / "speed.md").read_text()
    assert "2.00 ms at the start, 3.00 ms at the end" in text and "+50%" in text
    assert "rerun" in text
    assert json.loads((tmp_path / "speed.json").read_text())["pace"]["end_ms"] == 3.0
    write_report(SuiteResults(timings=[_timing()], pace=Pace(2.0, 2.1)), tmp_path)
    assert "(steady)" in (tmp_path / "speed.md").read_text()
    mid_run = Pace(2.0, 2.1, (2.05, 2.9, 2.2))
    write_report(SuiteResults(timings=[_timing()], pace=mid_run), tmp_path)
    text = (tmp_path / "speed.md").read_text()
    assert "2.05-2.90 ms at 3 probes between cases" in text and "+45%" in text
    assert "rerun" in text
    one_probe = Pace(2.0, 2.1, (2.05,))
    write_report(SuiteResults(timings=[_timing()], pace=one_probe), tmp_path)
    assert "2.05 ms at 1 probe between cases" in (tmp_path / "speed.md").read_text()


def _run(tmp_path, name: str, pace: Pace | None) -> dict:
    run = {"benchmarks": [], "machine_info": {}}
    if pace is not None:
        run["supercharge"] = {"pace": pace.as_dict()}
    (tmp_path / name).write_text(json.dumps(run))
    return run


def test_gate_notes_a_machine_that_changed_pace_between_and_during_runs(tmp_path):
    base, cur = _run(tmp_path, "a.json", Pace(2.0, 2.0)), _run(tmp_path, "b.json", Pace(3.0, 3.2))
    assert run_pace(cur) == Pace(3.0, 3.2)
    notes = pace_notes(cur, base)
    assert notes[0].startswith("machine pace during the current run: +7% (steady)")
    assert notes[1].startswith("machine pace during the baseline run: +0% (steady)")
    assert notes[2].startswith("machine pace baseline -> current: +55%") and "rerun" in notes[2]
    old = _run(tmp_path, "c.json", None)
    assert pace_notes(cur, old)[-1] == (
        "machine pace: not recorded in the baseline (saved by an older suite)"
    )
    assert pace_notes(old) == []


def test_the_pace_note_does_not_change_the_gates_verdict(tmp_path, capsys):
    _run(tmp_path, "slow.json", Pace(2.0, 4.0))
    # one run, one floor no case matches: the exit code is the floor's, the note only informs
    assert cli_main(["gate", str(tmp_path / "slow.json"), "--min-speedup", "x=2"]) == 1
    out = capsys.readouterr().out
    assert "machine pace during the current run: +100%" in out and "unmatched" in out
