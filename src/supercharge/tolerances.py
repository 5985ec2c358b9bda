"""Accuracy tolerances: what each precision (and, optionally, preprocessing) must meet.

They live in pyproject.toml under [tool.supercharge.tolerances.<precision>], with optional
per-preprocessing sub-tables [tool.supercharge.tolerances.<precision>.<preprocess>] (none is
shipped: the baked graph follows Pillow's two rounded passes closely enough for the plain fp32
gates). The most specific table wins; within a table pyproject.toml overrides the defaults in
DEFAULT_TOLERANCES, which mirror the shipped pyproject.toml. On Python 3.10 without `tomli` the
file cannot be read and the built-in defaults are used, with a warning. A typo in a key or a
preprocessing name is an error, not a silently looser gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from supercharge.config import load_table
from supercharge.errors import SuperchargeError

# Mirrors [tool.supercharge.tolerances] in pyproject.toml (a unit test keeps them equal).
# A nested dict is a per-preprocessing override of its precision's values.
DEFAULT_TOLERANCES: dict[str, dict[str, Any]] = {
    "fp32": {
        "top1_margin": 0.0,
        "top1_margin_relative": 0.025,
        "min_top5_overlap": 5,
        "min_cosine": 0.9999,
        "max_prob_error": 1e-3,
        "max_median_prob_error": 1e-5,
        "max_relative_logit_error": 0.05,
    },
    "fp16": {
        "top1_margin": 0.05,
        "top1_margin_relative": 0.25,
        "min_top5_overlap": 4,
        "min_cosine": 0.998,
        "max_prob_error": 0.05,
        "max_median_prob_error": 1e-4,
        "max_relative_logit_error": 0.4,
    },
    "bf16": {
        "top1_margin": 0.05,
        "top1_margin_relative": 0.5,
        "min_top5_overlap": 4,
        "min_cosine": 0.995,
        "max_prob_error": 0.05,
        "max_median_prob_error": 1e-4,
        "max_relative_logit_error": 0.6,
    },
    "int8": {
        "top1_margin": 0.1,
        "top1_margin_relative": 0.5,
        "min_top5_overlap": 4,
        "min_cosine": 0.98,
        "max_prob_error": 0.1,
        "max_median_prob_error": 2e-4,
        "max_relative_logit_error": 1.0,
    },
}


@dataclass(frozen=True)
class Tolerances:
    """What one (precision, preprocessing) must meet; `source` says where the values came from."""

    top1_margin: float  # top-1 must match where the reference's p1 - p2 exceeds this (0: always)
    top1_margin_relative: float  # the same for random weights: (l1 - l2) / std(reference logits)
    min_top5_overlap: int  # |top-5(reference) & top-5(candidate)|, as sets
    min_cosine: float  # cosine similarity of the logits
    max_prob_error: float  # max |p_ref - p| over the classes
    max_median_prob_error: float  # median |p_ref - p| over the classes
    max_relative_logit_error: float  # random weights: max |l_ref - l| / std(reference logits)
    source: str = "built-in defaults"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "source")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ToleranceTable:
    """Tolerances per precision, with optional per-preprocessing overrides.

    `source` names where they came from ("pyproject.toml" or "built-in defaults"); every
    Tolerances it hands out says which table, e.g. "pyproject.toml: fp32.baked".
    """

    def __init__(self, table: Mapping[str, Mapping[str, Any]], source: str) -> None:
        self.table = {p: dict(v) for p, v in table.items()}
        self.source = source

    def get(self, precision: str, preprocess: str | None = None) -> Tolerances:
        if precision not in self.table:
            raise SuperchargeError(
                f"no accuracy tolerances for precision {precision!r} in {self.source}: "
                f"add [tool.supercharge.tolerances.{precision}]"
            )
        base = self.table[precision]
        values = {k: v for k, v in base.items() if not isinstance(v, Mapping)}
        where = f"{self.source}: {precision}"
        override = base.get(preprocess) if preprocess else None
        if isinstance(override, Mapping):
            values.update(override)
            where = f"{self.source}: {precision}.{preprocess}"
        missing = [k for k in Tolerances.names() if k not in values]
        if missing:
            raise SuperchargeError(
                f"{where} lacks {', '.join(missing)}: set them in [tool.supercharge.tolerances]"
            )
        kinds = {f.name: f.type for f in fields(Tolerances)}
        cast = {
            k: int(values[k]) if kinds[k] == "int" else float(values[k])
            for k in kinds
            if k != "source"
        }
        return Tolerances(**cast, source=where)


def _merge(defaults: Mapping[str, Any], loaded: Mapping[str, Any], where: str) -> dict[str, Any]:
    """defaults <- loaded, one level of sub-tables deep; unknown keys are errors (typos)."""
    from supercharge.pipeline import PREPROCESS

    known = set(Tolerances.names())
    whole = {f.name for f in fields(Tolerances) if f.type == "int"}
    if not isinstance(loaded, Mapping):
        raise SuperchargeError(
            f"{where} must be a table: [tool.supercharge.tolerances.<precision>]"
        )
    merged: dict[str, Any] = {p: dict(v) for p, v in defaults.items()}
    for precision, values in loaded.items():
        if not isinstance(values, Mapping):
            raise SuperchargeError(f"{where}: {precision} must be a table of tolerances")
        target = merged.setdefault(precision, {})
        for key, value in values.items():
            if isinstance(value, Mapping):
                if key not in PREPROCESS:
                    raise SuperchargeError(
                        f"{where}: [{precision}.{key}]: {key!r} is not a preprocessing "
                        f"(choose from {', '.join(PREPROCESS)})"
                    )
                bad = sorted(set(value) - known)
                if bad:
                    raise SuperchargeError(
                        f"{where}: unknown tolerance {', '.join(bad)} in [{precision}.{key}]: "
                        f"known: {', '.join(sorted(known))}"
                    )
                for name, number in value.items():
                    _check_number(number, f"{where}: {precision}.{key}.{name}", name in whole)
                target[key] = {**target.get(key, {}), **value}
            elif key not in known:
                raise SuperchargeError(
                    f"{where}: unknown tolerance {key!r} in [{precision}]: "
                    f"known: {', '.join(sorted(known))}"
                )
            else:
                _check_number(value, f"{where}: {precision}.{key}", key in whole)
                target[key] = value
    return merged


def _check_number(value: Any, what: str, whole: bool) -> None:
    """A tolerance is a number, never NaN (every comparison with it is False, which turns the
    top-1 gate off), and a whole one for counts (int() would round 4.5 down: a looser gate)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise SuperchargeError(f"{what} must be a number, not {value!r}")
    if whole and not float(value).is_integer():
        raise SuperchargeError(f"{what} must be a whole number, not {value!r}")


def load_tolerances(pyproject: Path | str | None = None) -> ToleranceTable:
    """DEFAULT_TOLERANCES overlaid with [tool.supercharge.tolerances] from `pyproject`
    (default: the nearest pyproject.toml above the working directory, if any)."""
    loaded, path = load_table(pyproject, "tolerances", "tolerances")
    if loaded is None or path is None:
        return ToleranceTable(DEFAULT_TOLERANCES, "built-in defaults")
    where = f"{path.name} [tool.supercharge.tolerances]"
    return ToleranceTable(_merge(DEFAULT_TOLERANCES, loaded, where), path.name)
