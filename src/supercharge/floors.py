"""Speedup floors: fixed promises such as "ORT CPU with baked preprocessing stays 4x faster than
PyTorch", checked against one run.

A gate relative to the last run (gate.compare) lets slow drift through a few percent per merge;
a floor does not. Floors come from `supercharge gate --min-speedup PATTERN=RATIO` or from
[tool.supercharge.speedup_floors] in pyproject.toml, which the session report checks every run.
They judge end-to-end cases only (decoded images in, host logits out: what a user waits for),
by the speedup the report shows (the paired baseline's where the run timed one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from supercharge.config import load_table
from supercharge.errors import SuperchargeError
from supercharge.rounding import round_down


@dataclass(frozen=True)
class SpeedupFloor:
    """Every end-to-end case whose id matches `pattern` must reach `ratio`.

    `pattern` is a glob over case ids (`tf_efficientnet_lite0-ort-cpu-baked-fp32-bs1`); one that
    does not start with "*" also matches after any model name, so `ort-cpu-baked-*-bs1` holds
    every model.
    """

    pattern: str
    ratio: float

    @classmethod
    def parse(cls, text: str) -> SpeedupFloor:
        """From "PATTERN=RATIO", e.g. "ort-cpu-baked-fp32-bs1=4" (the ratio after the last '=')."""
        pattern, sep, ratio = text.rpartition("=")
        try:
            value = float(ratio)
        except ValueError:
            value = math.nan
        if not sep or not pattern:
            value = math.nan
        return cls.checked(pattern, value, f"--min-speedup {text!r}", "ort-cpu-baked-fp32-bs1=4")

    @classmethod
    def checked(cls, pattern: Any, ratio: Any, where: str, example: str) -> SpeedupFloor:
        ok = (
            isinstance(pattern, str)
            and pattern
            and isinstance(ratio, int | float)
            and not isinstance(ratio, bool)
            and math.isfinite(ratio)
            and ratio > 0
        )
        if not ok:
            raise SuperchargeError(
                f"{where}: give a case pattern and a positive ratio, e.g. {example}"
            )
        return cls(pattern, float(ratio))

    def matches(self, case: str) -> bool:
        return fnmatchcase(case, self.pattern) or (
            not self.pattern.startswith("*") and fnmatchcase(case, f"*-{self.pattern}")
        )


@dataclass(frozen=True)
class FloorCheck:
    """One floor against one case; `case` None: no end-to-end case with a speedup matched."""

    floor: SpeedupFloor
    case: str | None
    speedup: float | None

    @property
    def status(self) -> str:
        if self.case is None or self.speedup is None:
            return "unmatched"
        return "ok" if self.speedup >= self.floor.ratio else "below-target"

    def shown_speedup(self, digits: int = 2) -> str:
        """The speedup with `digits` decimals, rounded down as the speed table shows it: a miss
        of 3.996x against 4x reads 3.99x, never 4.00x next to "NOT met"."""
        if self.speedup is None:
            return "-"
        return round_down(self.speedup, digits)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.floor.pattern,
            "floor": self.floor.ratio,
            "case": self.case,
            "speedup": self.speedup,
            "status": self.status,
        }


def check_floors(speedups: Mapping[str, float], floors: Iterable[SpeedupFloor]) -> list[FloorCheck]:
    """Each floor against every case in `speedups` (end-to-end case id -> speedup) it matches,
    or one "unmatched" check when it matches none."""
    checks = []
    for floor in floors:
        hits = sorted(case for case in speedups if floor.matches(case))
        checks.extend(FloorCheck(floor, case, speedups[case]) for case in hits)
        if not hits:
            checks.append(FloorCheck(floor, None, None))
    return checks


def load_floors(pyproject: Path | str | None = None) -> list[SpeedupFloor]:
    """[tool.supercharge.speedup_floors] ("PATTERN" = RATIO) from `pyproject` (default: the
    nearest pyproject.toml above the working directory); none when there is no such table."""
    table, path = load_table(pyproject, "speedup_floors", "speedup floors")
    if table is None or path is None:
        return []
    where = f"{path.name} [tool.supercharge.speedup_floors]"
    if not isinstance(table, Mapping):
        raise SuperchargeError(f'{where} must be a table of "CASE_PATTERN" = RATIO')
    return [
        SpeedupFloor.checked(
            pattern, ratio, f"{where}: {pattern!r} = {ratio!r}", '"ort-cpu-baked-fp32-bs1" = 4'
        )
        for pattern, ratio in table.items()
    ]
