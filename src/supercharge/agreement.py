"""Accuracy gates: does a pipeline give PyTorch's answers? Metrics, tolerances, verdicts, tables.

The reference is timm's eval transform (PIL) + PyTorch CPU fp32 with TF32 off. A candidate's
logits for the same image are compared with it by

- top-1 equal: always required for fp32; for lower precisions only where the reference's top-1
  leads its runner-up by more than the precision's `top1_margin` (a near-tie may flip);
- top-5 overlap as sets (order ignored): at least `min_top5_overlap` of 5;
- cosine similarity of the logits;
- max and median absolute error of the softmax probabilities.

Random-weight models have tiny logits and near-uniform probabilities (GUIDE.md), so absolute
probability errors say nothing about them: they are judged by relative metrics only (cosine,
top-k overlap by logit rank, top-1 margin and max logit error in units of the reference logits'
standard deviation).

Tolerances live in pyproject.toml under [tool.supercharge.tolerances.<precision>], with optional
per-preprocessing sub-tables [tool.supercharge.tolerances.<precision>.<preprocess>] (none is
shipped: the baked graph follows Pillow's two rounded passes closely enough for the plain fp32
gates). The most specific table wins; within a table pyproject.toml
overrides the defaults in DEFAULT_TOLERANCES, which mirror the shipped pyproject.toml. On Python
3.10 without `tomli` the file cannot be read and the built-in defaults are used, with a warning.

Everything a test or the report needs travels as plain JSON-able rows (agreement_row), so the
failure message in a test, the session's accuracy.json/accuracy.md and the terminal summary all
come from the same data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from supercharge.config import load_table
from supercharge.errors import SuperchargeError

TOP_K = 5

# Pipelines that are in the grid to show what they get wrong: the gates must catch them, and a
# test asserts that they do, so their failure never makes the main job red.
EXPECTED_FAIL: dict[str, str] = {
    "seed": "the blog's preprocessing (ImageNet mean/std typed by hand, squash resize with "
    "torch's non-antialiased bicubic, no center crop)",
}

# Mirrors [tool.supercharge.tolerances] in pyproject.toml (a unit test keeps them equal).
# A nested dict is a per-preprocessing override of its precision's values.
DEFAULT_TOLERANCES: dict[str, dict[str, Any]] = {
    "fp32": {
        "top1_margin": 0.0,
        "top1_margin_relative": 0.0,
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
                target[key] = {**target.get(key, {}), **value}
            elif key not in known:
                raise SuperchargeError(
                    f"{where}: unknown tolerance {key!r} in [{precision}]: "
                    f"known: {', '.join(sorted(known))}"
                )
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SuperchargeError(f"{where}: {precision}.{key} must be a number")
            else:
                target[key] = value
    return merged


def load_tolerances(pyproject: Path | str | None = None) -> ToleranceTable:
    """DEFAULT_TOLERANCES overlaid with [tool.supercharge.tolerances] from `pyproject`
    (default: the nearest pyproject.toml above the working directory, if any)."""
    loaded, path = load_table(pyproject, "tolerances", "tolerances")
    if loaded is None or path is None:
        return ToleranceTable(DEFAULT_TOLERANCES, "built-in defaults")
    where = f"{path.name} [tool.supercharge.tolerances]"
    return ToleranceTable(_merge(DEFAULT_TOLERANCES, loaded, where), path.name)


# --- metrics -----------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_indices(logits: np.ndarray, k: int = TOP_K) -> list[int]:
    """The k largest logits' indices, largest first (ties: lower index first, deterministic)."""
    x = np.asarray(logits, dtype=np.float64)
    return [int(i) for i in np.argsort(-x, kind="stable")[:k]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64; NaN when either vector is zero or not finite."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    if not math.isfinite(norm) or norm == 0.0:
        return math.nan
    return float(np.dot(x, y) / norm)


@dataclass(frozen=True)
class Metrics:
    """One candidate image's logits against the reference's."""

    top1_equal: bool
    top5_overlap: int
    cosine: float
    max_prob_error: float
    median_prob_error: float
    max_relative_logit_error: float  # max |l_ref - l| / std(l_ref)
    top1_margin: float  # reference p1 - p2
    top1_margin_relative: float  # reference (l1 - l2) / std(l_ref)
    reference_top: tuple[int, ...]
    candidate_top: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reference_top"] = list(self.reference_top)
        d["candidate_top"] = list(self.candidate_top)
        return {k: _json_number(v) for k, v in d.items()}


def compare(reference: np.ndarray, candidate: np.ndarray, k: int = TOP_K) -> Metrics:
    """Metrics of one image: `reference` and `candidate` are 1-D logits over the same classes."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(-1)
    if ref.shape != cand.shape:
        raise ValueError(f"logits differ in shape: reference {ref.shape}, candidate {cand.shape}")
    if ref.size < 2:
        raise ValueError("need at least two classes to compare")
    if not np.all(np.isfinite(ref)):
        raise ValueError("the reference logits are not finite")
    finite = bool(np.all(np.isfinite(cand)))
    ref_top = top_indices(ref, max(k, 2))
    cand_top = top_indices(cand, k) if finite else []
    p_ref = softmax(ref)
    if finite:
        err = np.abs(p_ref - softmax(cand))
        max_err, median_err = float(err.max()), float(np.median(err))
    else:
        max_err = median_err = math.nan
    spread = float(ref.std())
    logit_err = float(np.abs(ref - cand).max()) if finite else math.nan
    gap = float(ref[ref_top[0]] - ref[ref_top[1]])
    return Metrics(
        top1_equal=bool(finite and cand_top[0] == ref_top[0]),
        top5_overlap=len(set(ref_top[:k]) & set(cand_top)),
        cosine=cosine(ref, cand) if finite else math.nan,
        max_prob_error=max_err,
        median_prob_error=median_err,
        max_relative_logit_error=logit_err / spread if spread > 0 else math.inf,
        top1_margin=float(p_ref[ref_top[0]] - p_ref[ref_top[1]]),
        top1_margin_relative=gap / spread if spread > 0 else 0.0,
        reference_top=tuple(ref_top[:k]),
        candidate_top=tuple(cand_top),
    )


# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One gate: a metric's value against its tolerance."""

    name: str
    value: Any
    tolerance: str  # e.g. ">= 0.9999"
    passed: bool

    def __str__(self) -> str:
        status = "ok" if self.passed else "FAIL"
        return f"{self.name} {_fmt(self.value)} vs {self.tolerance}: {status}"


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def __str__(self) -> str:
        if self.passed:
            return "pass"
        return "fail: " + "; ".join(str(c) for c in self.failed)


def _at_least(value: float, limit: float) -> bool:
    return bool(value >= limit)  # NaN fails


def _at_most(value: float, limit: float) -> bool:
    return bool(value <= limit)  # NaN fails


def judge(metrics: Metrics, tol: Tolerances, relative_only: bool = False) -> Verdict:
    """Every gate for one image. relative_only: random weights, no absolute probability errors."""
    if relative_only:
        margin, limit, unit = metrics.top1_margin_relative, tol.top1_margin_relative, " std"
    else:
        margin, limit, unit = metrics.top1_margin, tol.top1_margin, ""
    if margin > limit or limit <= 0:
        why = (
            "always for this precision"
            if limit <= 0
            else f"reference leads by {margin:.3g}{unit} > margin {limit:g}"
        )
        top1 = Check("top1_equal", metrics.top1_equal, f"required ({why})", metrics.top1_equal)
    else:
        top1 = Check(
            "top1_equal",
            metrics.top1_equal,
            f"not required (reference leads by {margin:.3g}{unit} <= margin {limit:g})",
            True,
        )
    checks = [
        top1,
        Check(
            "top5_overlap",
            metrics.top5_overlap,
            f">= {tol.min_top5_overlap}",
            metrics.top5_overlap >= tol.min_top5_overlap,
        ),
        Check(
            "cosine",
            metrics.cosine,
            f">= {tol.min_cosine:g}",
            _at_least(metrics.cosine, tol.min_cosine),
        ),
    ]
    if relative_only:
        checks.append(
            Check(
                "max_relative_logit_error",
                metrics.max_relative_logit_error,
                f"<= {tol.max_relative_logit_error:g}",
                _at_most(metrics.max_relative_logit_error, tol.max_relative_logit_error),
            )
        )
    else:
        checks += [
            Check(
                "max_prob_error",
                metrics.max_prob_error,
                f"<= {tol.max_prob_error:g}",
                _at_most(metrics.max_prob_error, tol.max_prob_error),
            ),
            Check(
                "median_prob_error",
                metrics.median_prob_error,
                f"<= {tol.max_median_prob_error:g}",
                _at_most(metrics.median_prob_error, tol.max_median_prob_error),
            ),
        ]
    return Verdict(tuple(checks))


def is_relative_only(bundle: Any) -> bool:
    """Random-weight models are judged by relative metrics only (their logits are tiny)."""
    try:
        return bundle.ref.weights.spec.kind == "random"
    except AttributeError:
        return False


def expected_verdict(preprocess: str) -> tuple[str, str]:
    """("fail", why) for a pipeline in the grid to show a defect, else ("pass", "")."""
    if preprocess in EXPECTED_FAIL:
        return "fail", EXPECTED_FAIL[preprocess]
    return "pass", ""


# --- rows --------------------------------------------------------------------------------------


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _top_list(logits: np.ndarray, indices: Sequence[int], class_names: Sequence[str]) -> list:
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    probs = softmax(x)
    return [
        {
            "index": int(i),
            "label": _label(class_names, i),
            "prob": float(probs[int(i)]),
            "logit": float(x[int(i)]),
        }
        for i in indices
    ]


def _label(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


def agreement_row(
    *,
    reference: np.ndarray,
    candidate: np.ndarray,
    class_names: Sequence[str],
    tolerances: Tolerances,
    relative_only: bool = False,
    combo: str,
    backend: str,
    preprocess: str,
    precision: str,
    image: str,
    mode: str = "single",
    model: str = "",
    weights: str = "",
    ran: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Judge one image's candidate logits; everything the report and a failure message need."""
    metrics = compare(reference, candidate)
    verdict = judge(metrics, tolerances, relative_only)
    expected, why = expected_verdict(preprocess)
    cand = np.asarray(candidate, dtype=np.float64).reshape(-1)
    return {
        "model": model,
        "weights": weights,
        "combo": combo,
        "backend": backend,
        "preprocess": preprocess,
        "precision": precision,
        "image": image,
        "mode": mode,
        "judged_by": "relative" if relative_only else "absolute",
        "verdict": "pass" if verdict.passed else "fail",
        "expected": expected,
        "expected_why": why,
        "failed": [str(c) for c in verdict.failed],
        "checks": [{**asdict(c), "value": _json_number(_plain(c.value))} for c in verdict.checks],
        "metrics": metrics.as_dict(),
        "tolerances": tolerances.as_dict(),
        "reference_top5": _top_list(reference, metrics.reference_top, class_names),
        "candidate_top5": (
            _top_list(cand, metrics.candidate_top, class_names) if metrics.candidate_top else []
        ),
        "ran": dict(ran or {}),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


# --- formatting --------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if 0.99 <= abs(value) < 1:
            return f"{value:.6f}"
        return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


def format_top5(row: Mapping[str, Any]) -> str:
    """Both top-5 lists side by side, the blog's `label: prob%` lines; `*` marks a class missing
    from the other list's top-5."""
    ref, cand = row["reference_top5"], row.get("candidate_top5") or []
    relative = row.get("judged_by") == "relative"

    def entry(e: Mapping[str, Any], other: set[int]) -> str:
        mark = "*" if e["index"] not in other else " "
        # Random weights: near-uniform probabilities, so the logit says more.
        logit = f" (logit {e['logit']:.4g})" if relative and "logit" in e else ""
        return f"{mark} {e['label']}: {e['prob'] * 100:.2f}%{logit}"

    left = [entry(e, {c["index"] for c in cand}) for e in ref]
    right = [entry(e, {r["index"] for r in ref}) for e in cand]
    left_title = "reference: torch-cpu timm fp32"
    right_title = f"candidate: {row['backend']} {row['preprocess']} {row['precision']}"
    width = max(len(left_title), *(len(s) for s in left)) + 2
    lines = [f"{left_title:<{width}}| {right_title}"]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else "(non-finite logits)" if not right and i == 0 else ""
        lines.append(f"{a:<{width}}| {b}")
    return "\n".join(lines)


def format_checks(row: Mapping[str, Any]) -> str:
    """Every metric next to its tolerance, one line each."""
    checks = row["checks"]
    width = max(len(c["name"]) for c in checks) + 2
    lines = []
    for c in checks:
        status = "ok  " if c["passed"] else "FAIL"
        lines.append(f"{status} {c['name']:<{width}}{_fmt(c['value']):<12}{c['tolerance']}")
    return "\n".join(lines)


def format_row(row: Mapping[str, Any]) -> str:
    """The failure message for one judged image: header, top-5 side by side, checks."""
    what = "one image" if row["mode"] == "single" else f"in a batch ({row['mode']})"
    head = f"{row['combo']} on {row['image']} ({what}): {row['verdict'].upper()}"
    if row.get("expected") == "fail":
        head += f" (expected to fail: {row['expected_why']})"
    tol = f"tolerances: {row['tolerances']['source']}; judged by {row['judged_by']} metrics"
    return "\n".join([head, format_top5(row), format_checks(row), tol])


def _combo_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def worst(key: str, pick: Any) -> float:
        values = [r["metrics"][key] for r in rows]
        return math.nan if any(v is None for v in values) else pick(values)

    failed_rows = [r for r in rows if r["verdict"] == "fail"]
    per_check: dict[str, int] = {}
    for r in failed_rows:
        for c in r["checks"]:
            if not c["passed"]:
                per_check[c["name"]] = per_check.get(c["name"], 0) + 1
    relative = rows[0]["judged_by"] == "relative"
    return {
        "combo": rows[0]["combo"],
        "judged": len(rows),
        "top1": f"{sum(bool(r['metrics']['top1_equal']) for r in rows)}/{len(rows)}",
        "top5": min(r["metrics"]["top5_overlap"] for r in rows),
        "cosine": worst("cosine", min),
        "max_prob": None if relative else worst("max_prob_error", max),
        "median_prob": None if relative else worst("median_prob_error", max),
        "rel_logit": worst("max_relative_logit_error", max),
        "failed": failed_rows,
        "per_check": per_check,
        "expected": rows[0]["expected"],
        "expected_why": rows[0]["expected_why"],
    }


def _verdict_cell(s: Mapping[str, Any]) -> str:
    n = s["judged"]
    checks = ", ".join(f"{name} {k}/{n}" for name, k in s["per_check"].items())
    if s["expected"] == "fail":
        if s["failed"]:
            return f"fails as expected ({checks})"
        return "**PASSED, expected to fail: the gates missed it**"
    return "pass" if not s["failed"] else f"**FAIL** ({checks})"


def accuracy_markdown(rows: Iterable[Mapping[str, Any]]) -> str:
    """The session's accuracy table: one line per combination (worst case over its images, one
    at a time and in a batch), the tolerances used, and which pipelines are meant to fail."""
    rows = list(rows)
    if not rows:
        return "(no accuracy rows)"
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("model", ""), r["combo"]), []).append(r)
    summaries = [_combo_summary(g) for g in groups.values()]
    header = (
        "| combination | judged | top-1 agree | min top-5 overlap | worst cosine "
        "| worst max abs dp | worst median abs dp | worst max abs dlogit/std | verdict |"
    )
    lines = [header, "|" + "---|" * 9]
    for s in summaries:
        cells = [
            s["combo"],
            str(s["judged"]),
            s["top1"],
            f"{s['top5']}/5",
            _fmt(s["cosine"]),
            "-" if s["max_prob"] is None else _fmt(s["max_prob"]),
            "-" if s["median_prob"] is None else _fmt(s["median_prob"]),
            _fmt(s["rel_logit"]),
            _verdict_cell(s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    model = first.get("model") or "the model"
    weights = f" ({first['weights']} weights)" if first.get("weights") else ""
    mode = (
        "relative metrics only (random weights: cosine, top-k by logit rank, logit error / std)"
        if first["judged_by"] == "relative"
        else "absolute and relative metrics"
    )
    out = [
        f"{model}{weights} against PyTorch CPU fp32 + timm preprocessing, on every fixture "
        f"image one at a time and all in one batch; judged by {mode}. "
        "dp: softmax probability error; dlogit/std: logit error over the reference logits' std "
        "(gated for random weights only).",
        "",
        *lines,
        "",
        _tolerance_markdown(rows),
    ]
    notes = sorted({(s["combo"], s["expected_why"]) for s in summaries if s["expected"] == "fail"})
    for combo, why in notes:
        seen = next(s for s in summaries if s["combo"] == combo)
        images = sorted({r["image"] for r in seen["failed"] if not r["metrics"]["top1_equal"]})
        top1 = f"top-1 differs on {', '.join(images)}" if images else "top-1 kept"
        out.append(
            f"\n{combo} is expected to fail: {why}. Measured: {top1}; worst cosine "
            f"{_fmt(seen['cosine'])}; min top-5 overlap {seen['top5']}/5."
        )
    unexpected = [r for s in summaries if s["expected"] == "pass" for r in s["failed"]]
    if unexpected:
        out.append("\nFailures:")
        out += [
            f"- {r['combo']} {r['image']} ({r['mode']}): {'; '.join(r['failed'])}"
            for r in unexpected
        ]
    return "\n".join(out)


def _tolerance_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    used: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        used.setdefault(r["tolerances"]["source"], r["tolerances"])
    keys = Tolerances.names()
    lines = [
        "| tolerances | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for source, tol in used.items():
        lines.append("| " + source + " | " + " | ".join(f"{tol[k]:g}" for k in keys) + " |")
    return "\n".join(lines)
