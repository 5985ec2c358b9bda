"""The machine's pace: one fixed ONNX Runtime workload, timed at the start and end of a run and
between its cases.

Why: shared CI machines have phases, minutes long, in which ORT's memory-bound work runs
45-60% slower while PyTorch moves by 5-20% (docs/results/cpu-2026-11-29.md). A paired speedup
does not cancel a slowdown that hits the two runtimes unequally, so a floor or a gate can fail
on the machine alone. Timing the same small workload at both ends of a run, and keeping it
with the run, lets the report and `supercharge gate` say when the machine itself changed pace
(they say so; they do not excuse a failure).

The workload is the kind of work the phases hurt most and the front ends are made of: a 1080p
uint8 frame transposed to NCHW and cast to float, then reduced to one number (so the output
copy is nothing), on the CPU EP with the suite's session options.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

WORKLOAD = "ORT CPU: transpose + cast of a 1080x1920x3 uint8 frame, then its mean"
FRAME = (1, 1080, 1920, 3)
RUNS = 40  # ~0.1 s on the 2-core CI VM
SHIFT = 0.15  # a pace change beyond this is reported: drift between runs stays within ~5%


@dataclass(frozen=True)
class Pace:
    """Median milliseconds of the workload at the start of a run, between its cases (each time
    a new pipeline is built) and, once measured, at its end. A start/end pair alone misses a
    slow phase that begins after the start and is over by the end."""

    start_ms: float
    end_ms: float | None = None
    during_ms: tuple[float, ...] = ()

    def samples(self) -> tuple[float, ...]:
        return (self.start_ms, *self.during_ms, *(() if self.end_ms is None else (self.end_ms,)))

    def with_probe(self, ms: float) -> Pace:
        """This pace with one more measurement between cases."""
        return replace(self, during_ms=(*self.during_ms, ms))

    def change(self) -> float | None:
        """The largest move from the start pace over the later measurements (sample / start - 1,
        positive when the machine got slower), or None before any."""
        later = self.samples()[1:]
        if not later:
            return None
        return max((ms / self.start_ms - 1.0 for ms in later), key=abs)

    def mean_ms(self) -> float:
        samples = self.samples()
        return sum(samples) / len(samples)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": WORKLOAD,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "during_ms": list(self.during_ms),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Pace | None:
        """The pace a saved run carries, or None for runs saved without one (or malformed)."""
        try:
            start, end = float(data["start_ms"]), data.get("end_ms")
            end = None if end is None else float(end)
            during = tuple(float(ms) for ms in data.get("during_ms") or ())
        except (TypeError, KeyError, ValueError, AttributeError):
            return None
        # each is divided by or into the start: a zero, negative or non-finite one is no pace
        ends = () if end is None else (end,)
        if not all(math.isfinite(ms) and ms > 0 for ms in (start, *during, *ends)):
            return None
        return cls(start, end, during)


def _workload() -> bytes:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Transpose", ["frame"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["as_float"], ["mean"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "pace",
        [helper.make_tensor_value_info("frame", TensorProto.UINT8, list(FRAME))],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def measure(runs: int = RUNS) -> float:
    """Median ms of the workload over `runs` runs, after a few warm-up runs (session creation
    and the first allocations are not timed). A fixed count, not timing.probe's time budget:
    two saved runs then time exactly the same thing."""
    import onnxruntime as ort

    from supercharge.runners.ort_runner import session_options

    session = ort.InferenceSession(
        _workload(), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    frame = np.random.default_rng(0).integers(0, 256, FRAME, dtype=np.uint8)
    feed = {"frame": frame}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def describe_change(change: float, what: str) -> str:
    """One line on a pace change: how much, and what it means for the ratios beside it."""
    # one decimal near the threshold, more where needed to keep the printed value on the
    # verdict's side of it ("+15%" never stands for a change beyond 15%)
    beyond, threshold = abs(change) > SHIFT, round(SHIFT * 100, 6)
    first = 1 if abs(abs(change) - SHIFT) < 0.01 else 0
    digits = next(
        d for d in range(first, 4) if (round(abs(change) * 100, d) > threshold) == beyond or d == 3
    )
    pct = f"{change:+.{digits}%}"
    if not beyond:
        return f"machine pace {what}: {pct} (steady)"
    slower = "slower" if change > 0 else "faster"
    return (
        f"machine pace {what}: {pct}, the machine itself ran {slower} (ORT's memory-bound work "
        "moves more than PyTorch's, so paired speedups move too): rerun before trusting a "
        "verdict on these ratios"
    )
