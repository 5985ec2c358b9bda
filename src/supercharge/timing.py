"""How one benchmark case is timed: warm-up, a round count from a time budget, and the record.

pytest-benchmark measures and stores; this only chooses its pedantic parameters so that every
case gets the same treatment. Warm-up runs are never recorded (first calls allocate, autotune,
compile); the round count fills --benchmark-max-time but never drops below a floor, so even slow
cases get a median worth comparing. The callable must finish its device work before returning
(runners synchronise), so each round is the real latency.

A shared machine's speed drifts by more than the differences a gate must catch (this 2-core VM:
PyTorch's fp32 forward 9-19 ms from one minute to the next, ORT moving with it). So each case's
baseline is also timed right before and right after it (`reference`, a short burst each side)
and the case's speedup is taken against that paired baseline: the drift between cases cancels
out of the ratio, as it does between blocks that alternate (measured: a 2.7-2.9x ratio while
both runtimes moved by 20%).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from supercharge.cases import Case
from supercharge.report import SuiteResults, Timing

WARMUP_ROUNDS = 3
MIN_ROUNDS = 10
MAX_ROUNDS = 1000
PROBE_SHARE = 0.2  # of the case's time budget, for the paired baseline on each side of it
MIN_PROBE_ROUNDS = 3
# Idle time before each side of a pairing. A baked-graph session's ORT threads spin for a while
# after its last run (as PyTorch's OpenMP threads do), holding cores the next runtime needs:
# without it the baseline burst right after a spinning case measured 20-40% IQR (1-4% after a
# non-spinning one), with ~1% drift, i.e. the case slowed its own reference.
SETTLE_S = 0.05


def plan_rounds(seconds_per_call: float, budget_s: float, min_rounds: int = MIN_ROUNDS) -> int:
    """Rounds that fill `budget_s`, at least `min_rounds`, at most MAX_ROUNDS."""
    if seconds_per_call <= 0:
        return MAX_ROUNDS
    return max(min_rounds, min(MAX_ROUNDS, math.ceil(budget_s / seconds_per_call)))


def probe(fn: Callable[[], Any], budget_s: float) -> list[float]:
    """Seconds per call of `fn` over a short burst filling `budget_s` (at least
    MIN_PROBE_ROUNDS calls), after SETTLE_S idle and one untimed call that sizes the burst."""
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    fn()
    rounds = plan_rounds(time.perf_counter() - start, budget_s, MIN_PROBE_ROUNDS)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def time_call(
    benchmark: Any,
    fn: Callable[[], Any],
    case: Case,
    group: str,
    ran: dict[str, Any],
    results: SuiteResults,
    reference: Callable[[], Any] | None = None,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """Time `fn` for `case` with pytest-benchmark, annotate and record it; returns fn's result.

    `reference` is the case's baseline doing the same work (None for the baseline itself, or
    when the run has no baseline): it is timed just before and just after `fn`, outside
    pytest-benchmark's rounds, and recorded as `paired_baseline_s` with `paired_speedup`.
    `check` (raising on a wrong result) judges fn's result before anything is marked complete
    or recorded: a case whose output is wrong has no speed.
    Under --benchmark-disable the call runs once for its assertions and nothing is recorded.
    """
    if benchmark.disabled:  # through the fixture, which runs it once: no "unused" warning
        out = benchmark(fn)
        if check is not None:
            check(out)
        return out
    # The fastest warm-up call sizes the rounds: the first calls carry one-off costs (kernel
    # compilation, cuDNN's algorithm search, allocator growth) that would cut the rounds short.
    warmups = []
    for _ in range(WARMUP_ROUNDS):
        start = time.perf_counter()
        fn()
        warmups.append(time.perf_counter() - start)
    per_call = min(warmups)
    # --benchmark-max-time / --benchmark-min-rounds as the fixture resolved them (markers too).
    max_time = getattr(benchmark, "_max_time", None)
    budget = float(1.0 if max_time is None else max_time)  # 0 is the shortest, not the default
    min_rounds = max(MIN_ROUNDS, int(getattr(benchmark, "_min_rounds", 0) or 0))
    rounds = plan_rounds(per_call, budget, min_rounds)

    benchmark.group = f"{case.model} {group} bs{case.batch_size}"
    benchmark.extra_info.update(
        {
            "case": case.id,
            "model": case.model,
            "backend": case.combo.backend,
            "preprocess": case.combo.preprocess,
            "precision": case.combo.precision,
            "batch_size": case.batch_size,
            "timed": group,
            "providers": ran.get("providers", []),
            "node_placement": ran.get("node_placement", {}),
            "device": ran.get("device"),
            "runner": ran,
            # False until the rounds and the paired baseline are done: pytest-benchmark saves
            # a case interrupted mid-rounds, and the gate must not judge a half-measured case
            "complete": False,
        }
    )
    before = []
    if reference is not None:
        before = probe(reference, PROBE_SHARE * budget)
        time.sleep(SETTLE_S)  # the reference's threads, done spinning before the case
    out = benchmark.pedantic(fn, warmup_rounds=1, rounds=rounds, iterations=1)
    if check is not None:
        check(out)  # before "complete" and the report: a wrong output is not a result
    after = probe(reference, PROBE_SHARE * budget) if reference is not None else []
    stats = benchmark.stats.stats
    info = benchmark.extra_info
    info["images_per_s"] = case.batch_size / stats.median
    info["iqr_over_median"] = stats.iqr / stats.median
    paired = paired_iqr = None
    if reference is not None:
        paired = statistics.median(before + after)
        q1, _, q3 = statistics.quantiles(before + after, n=4)
        paired_iqr = q3 - q1
        info["paired_baseline_s"] = paired
        info["paired_baseline_iqr_s"] = paired_iqr
        info["paired_speedup"] = paired / stats.median
        # how far the machine moved while the case ran: the baseline after vs before it
        info["paired_baseline_drift"] = statistics.median(after) / statistics.median(before) - 1
    info["complete"] = True
    results.timings.append(
        Timing(
            case,
            group,
            stats.median,
            stats.iqr,
            stats.rounds,
            ran,
            paired_baseline_s=paired,
            paired_baseline_iqr_s=paired_iqr,
        )
    )
    return out
