"""How one benchmark case is timed: warm-up, a round count from a time budget, and the record.

pytest-benchmark measures and stores; this only chooses its pedantic parameters so that every
case gets the same treatment. Warm-up runs are never recorded (first calls allocate, autotune,
compile); the round count fills --benchmark-max-time but never drops below a floor, so even slow
cases get a median worth comparing. The callable must finish its device work before returning
(runners synchronise), so each round is the real latency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from supercharge.cases import Case
from supercharge.report import SuiteResults, Timing

WARMUP_ROUNDS = 3
MIN_ROUNDS = 10
MAX_ROUNDS = 1000


def plan_rounds(seconds_per_call: float, budget_s: float, min_rounds: int = MIN_ROUNDS) -> int:
    """Rounds that fill `budget_s`, at least `min_rounds`, at most MAX_ROUNDS."""
    if seconds_per_call <= 0:
        return MAX_ROUNDS
    return max(min_rounds, min(MAX_ROUNDS, math.ceil(budget_s / seconds_per_call)))


def time_call(
    benchmark: Any,
    fn: Callable[[], Any],
    case: Case,
    group: str,
    ran: dict[str, Any],
    results: SuiteResults,
) -> Any:
    """Time `fn` for `case` with pytest-benchmark, annotate and record it; returns fn's result.

    Under --benchmark-disable the call runs once for its assertions and nothing is recorded.
    """
    if benchmark.disabled:
        return fn()
    start = time.perf_counter()
    for _ in range(WARMUP_ROUNDS):
        fn()
    per_call = (time.perf_counter() - start) / WARMUP_ROUNDS
    # --benchmark-max-time / --benchmark-min-rounds as the fixture resolved them (markers too).
    budget = float(getattr(benchmark, "_max_time", 1.0) or 1.0)
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
        }
    )
    out = benchmark.pedantic(fn, warmup_rounds=1, rounds=rounds, iterations=1)
    stats = benchmark.stats.stats
    benchmark.extra_info["images_per_s"] = case.batch_size / stats.median
    benchmark.extra_info["iqr_over_median"] = stats.iqr / stats.median
    results.timings.append(Timing(case, group, stats.median, stats.iqr, stats.rounds, ran))
    return out
