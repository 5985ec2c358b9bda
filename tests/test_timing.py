"""How a case is timed: warm-up, the round plan, and the paired baseline around each case."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import replace
from types import SimpleNamespace

import pytest

from supercharge import timing
from supercharge.cases import Case, Combo
from supercharge.report import END_TO_END, SuiteResults, speed_rows
from supercharge.timing import MIN_PROBE_ROUNDS, MIN_ROUNDS, plan_rounds, probe, time_call

MODEL = "tf_efficientnet_lite0"
BASE = Case(MODEL, Combo("torch-cpu", "timm", "fp32"), 1)
CASE = Case(MODEL, Combo("ort-cpu", "baked", "fp32"), 1)


class Clock:
    """A perf_counter that moves only when work is done; `slowdown` is the machine's state."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slowdown = 1.0
        self.sleeps: list[float] = []  # when each idle period began
        self.on_sleep = lambda: None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(self.now)
        self.on_sleep()
        self.now += seconds

    def work(self, seconds: float):
        def fn() -> float:
            self.now += seconds * self.slowdown
            return seconds

        return fn


class FakeBenchmark:
    """pytest-benchmark's fixture as time_call uses it: pedantic(), stats, extra_info."""

    disabled = False
    _min_rounds = 0

    def __init__(self, clock: Clock, max_time: float = 0.1) -> None:
        self.clock, self._max_time = clock, max_time
        self.extra_info: dict = {}
        self.group = None
        self.rounds = 0

    def __call__(self, fn):
        """As pytest-benchmark's fixture under --benchmark-disable: one plain call."""
        assert self.disabled, "time_call times through pedantic(), not __call__"
        self.used = True
        return fn()

    def pedantic(self, fn, warmup_rounds, rounds, iterations):
        assert iterations == 1
        for _ in range(warmup_rounds):
            fn()
        data = []
        for _ in range(rounds):
            start = self.clock()
            out = fn()
            data.append(self.clock() - start)
        q1, _, q3 = statistics.quantiles(data, n=4)
        self.rounds = rounds
        self.stats = SimpleNamespace(
            stats=SimpleNamespace(median=statistics.median(data), iqr=q3 - q1, rounds=rounds)
        )
        return out


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=clock, sleep=clock.sleep))
    return clock


def test_paired_speedup_cancels_a_machine_slowdown_between_cases(clock):
    results = SuiteResults()
    baseline = clock.work(0.010)
    time_call(FakeBenchmark(clock), baseline, BASE, END_TO_END, {}, results)
    clock.slowdown = 2.0  # the machine is twice slower by the time the next case runs
    bench = FakeBenchmark(clock)
    out = time_call(bench, clock.work(0.0025), CASE, END_TO_END, {}, results, reference=baseline)
    assert out == 0.0025  # the case's own result comes back
    rows = {r["case"]: r for r in speed_rows(results.timings)}
    assert rows[CASE.id]["speedup"] == 4.0 and rows[CASE.id]["speedup_basis"] == "paired"
    assert rows[CASE.id]["baseline_ms_per_image"] == 20.0  # the baseline as it ran beside it
    assert rows[BASE.id]["speedup"] == 1.0 and rows[BASE.id]["speedup_basis"] == "run"
    info = bench.extra_info
    assert info["paired_baseline_s"] == pytest.approx(0.020)
    assert info["paired_speedup"] == pytest.approx(4.0)
    assert info["paired_baseline_drift"] == pytest.approx(0.0)
    # without the pairing, the same timings read the machine's slowdown as a slower backend
    unpaired = [replace(t, paired_baseline_s=None) for t in results.timings]
    assert {r["case"]: r for r in speed_rows(unpaired)}[CASE.id]["speedup"] == 2.0


def test_the_baseline_is_timed_on_both_sides_of_the_case(clock):
    calls: list[str] = []
    work = clock.work(0.001)

    def reference():
        calls.append("baseline")
        return work()

    def fn():
        calls.append("case")
        return work()

    bench = FakeBenchmark(clock, max_time=0.1)
    time_call(bench, fn, CASE, END_TO_END, {}, SuiteResults(), reference=reference)
    runs = [(name, len(list(group))) for name, group in itertools.groupby(calls)]
    # the case warms up, then its pytest-benchmark rounds sit between two bursts of the
    # baseline: one untimed call and a burst filling PROBE_SHARE of the budget (0.02 s / 1 ms)
    assert [name for name, _ in runs] == ["case", "baseline", "case", "baseline"]
    assert runs[0][1] == timing.WARMUP_ROUNDS and runs[2][1] == 1 + bench.rounds
    assert all(20 <= n - 1 <= 22 for _, n in runs[1::2])  # ceil() of a ratio of float times


def test_each_side_of_the_pairing_starts_after_an_idle_settle(clock):
    """Spinning threads of whatever ran last get SETTLE_S to give their cores back before the
    baseline burst, the case's rounds, and the baseline burst after them."""
    calls: list[str] = []
    clock.on_sleep = lambda: calls.append("idle")
    work = clock.work(0.001)

    def tagged(name):
        def fn():
            calls.append(name)
            return work()

        return fn

    time_call(
        FakeBenchmark(clock), tagged("case"), CASE, END_TO_END, {}, SuiteResults(),
        reference=tagged("baseline"),
    )  # fmt: skip
    runs = [name for name, _ in itertools.groupby(calls)]
    assert runs == ["case", "idle", "baseline", "idle", "case", "idle", "baseline"]
    assert all(b - a >= timing.SETTLE_S for a, b in itertools.pairwise(clock.sleeps))


def test_the_machine_moving_during_a_case_is_recorded_as_drift(clock):
    bench = FakeBenchmark(clock)
    case, calls = clock.work(0.001), []

    def fn():
        calls.append(1)
        if len(calls) > timing.WARMUP_ROUNDS:  # slower from the case's timed part on
            clock.slowdown = 1.5
        return case()

    time_call(bench, fn, CASE, END_TO_END, {}, SuiteResults(), reference=clock.work(0.004))
    assert bench.extra_info["paired_baseline_drift"] == pytest.approx(0.5)


def test_no_reference_means_no_pairing(clock):
    results = SuiteResults()
    bench = FakeBenchmark(clock)
    time_call(bench, clock.work(0.002), CASE, END_TO_END, {}, results)
    assert "paired_speedup" not in bench.extra_info
    assert results.timings[0].paired_baseline_s is None
    # and no baseline row in the run: no speedup at all rather than one across sessions
    assert speed_rows(results.timings)[0]["speedup"] is None


def test_a_disabled_benchmark_runs_once_and_records_nothing(clock):
    calls = []
    bench = FakeBenchmark(clock)
    bench.disabled = True
    results = SuiteResults()
    assert time_call(bench, lambda: calls.append(1) or 7, CASE, END_TO_END, {}, results) == 7
    assert calls == [1] and results.empty
    assert bench.used  # through the fixture, so pytest-benchmark does not warn it went unused


def test_a_zero_max_time_is_the_shortest_budget_not_the_default(clock):
    bench = FakeBenchmark(clock, max_time=0)
    time_call(bench, clock.work(0.001), CASE, END_TO_END, {}, SuiteResults())
    assert bench.rounds == MIN_ROUNDS


def test_a_case_is_marked_complete_only_after_its_rounds_and_its_pairing(clock):
    """pytest-benchmark saves a case interrupted mid-rounds: "complete" says it was not."""

    class Interrupted(FakeBenchmark):
        def pedantic(self, *args, **kwargs):
            raise KeyboardInterrupt

    bench = Interrupted(clock)
    with pytest.raises(KeyboardInterrupt):
        time_call(bench, clock.work(0.001), CASE, END_TO_END, {}, SuiteResults())
    assert bench.extra_info["case"] == CASE.id and bench.extra_info["complete"] is False
    done = FakeBenchmark(clock)
    time_call(done, clock.work(0.001), CASE, END_TO_END, {}, SuiteResults(), clock.work(0.002))
    assert done.extra_info["complete"] is True and "paired_speedup" in done.extra_info


def test_probe_takes_at_least_its_floor_of_rounds(clock):
    samples = probe(clock.work(1.0), budget_s=0.5)  # slower than the whole budget
    assert samples == pytest.approx([1.0] * MIN_PROBE_ROUNDS)


def test_rounds_are_sized_by_the_fastest_warm_up_call(clock):
    """A first call carrying one-off costs (kernel compilation, cuDNN's search) must not cut
    the rounds to the minimum: 1 ms calls after a 1 s first call fill a 0.1 s budget."""
    steady = clock.work(0.001)
    calls = []

    def fn():
        calls.append(1)
        return clock.work(1.0)() if len(calls) == 1 else steady()

    bench = FakeBenchmark(clock, max_time=0.1)
    time_call(bench, fn, CASE, END_TO_END, {}, SuiteResults())
    assert 100 <= bench.rounds <= 101  # ceil() of a float ratio; MIN_ROUNDS from the mean


def test_benchmark_min_rounds_is_honoured_over_the_time_budget(clock):
    """--benchmark-min-rounds 50 with 1 s calls and a 0.1 s budget: 50 rounds, not the
    budget's minimum, so a user asking for a steadier median gets it."""
    bench = FakeBenchmark(clock, max_time=0.1)
    bench._min_rounds = 50
    time_call(bench, clock.work(1.0), CASE, END_TO_END, {}, SuiteResults())
    assert bench.rounds == 50


def test_round_plan_fills_the_budget_within_bounds():
    assert plan_rounds(0.01, 1.0) == 100
    assert plan_rounds(1.0, 1.0) == 10  # slow cases still get a comparable median
    assert plan_rounds(1e-7, 1.0) == 1000
    assert plan_rounds(0.5, 1.0, min_rounds=30) == 30


def test_a_wrong_result_is_neither_complete_nor_recorded(clock):
    """The case's output check runs before the case is marked complete or reported."""
    results, bench = SuiteResults(), FakeBenchmark(clock)

    def check(out):
        assert out == 0.0, "wrong logits"

    with pytest.raises(AssertionError, match="wrong logits"):
        time_call(
            bench, clock.work(0.001), CASE, END_TO_END, {}, results, clock.work(0.002), check=check
        )
    assert bench.extra_info["complete"] is False and results.timings == []
