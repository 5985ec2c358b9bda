"""Accuracy gates: does a pipeline give PyTorch's answers? Metrics, verdicts and result rows.

The reference is timm's eval transform (PIL) + PyTorch CPU fp32 with TF32 off. A candidate's
logits for the same image are compared with it by

- top-1 equal: always required for fp32 with real weights; otherwise only where the reference's
  top-1 leads its runner-up by more than the precision's `top1_margin` (random weights:
  `top1_margin_relative`, 0.025 std even at fp32) (a near-tie may flip);
- top-5 overlap as sets (order ignored): at least `min_top5_overlap` of 5;
- cosine similarity of the logits;
- max and median absolute error of the softmax probabilities.

Random-weight models have tiny logits and near-uniform probabilities, so absolute
probability errors say nothing about them: they are judged by relative metrics only (cosine,
top-k overlap by logit rank, top-1 margin and max logit error in units of the reference logits'
standard deviation). Their near-flat logits tie at rank 5 as at rank 1, so top-5 overlap counts
a swap as agreeing when the class swapped in and the one it pushed out both lie within
`top1_margin_relative` std of the reference's 5th.

Tolerances come from supercharge.tolerances (pyproject.toml).

Everything a test or the report needs travels as plain JSON-able rows (agreement_row), so the
failure message in a test, the session's accuracy.json/accuracy.md and the terminal summary all
come from the same data (supercharge.accuracy_report formats them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from supercharge.rounding import round_down
from supercharge.tolerances import Tolerances

TOP_K = 5

# Pipelines that are in the grid to show what they get wrong: the gates must catch them, and a
# test asserts that they do, so their failure never makes the main job red.
EXPECTED_FAIL: dict[str, str] = {
    "seed": "the blog's preprocessing (ImageNet mean/std typed by hand, squash resize with "
    "torch's non-antialiased bicubic, no center crop)",
}


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
    # the candidate's top-5 classes outside the reference's: how far each sits below the
    # reference's 5th logit, in std(l_ref) (a near-tie may swap, as at top-1)
    top5_swap_gaps_relative: tuple[float, ...] = ()
    # the reference's top-5 classes the candidate dropped: how far each sits above its 5th
    top5_dropped_gaps_relative: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in (
            "reference_top",
            "candidate_top",
            "top5_swap_gaps_relative",
            "top5_dropped_gaps_relative",
        ):
            d[name] = [_json_number(v) for v in getattr(self, name)]
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
    fifth = ref[ref_top[:k][-1]]

    def from_fifth(c: int) -> float:
        return float(abs(ref[c] - fifth) / spread) if spread > 0 else math.inf

    swap_gaps = tuple(from_fifth(c) for c in cand_top if c not in ref_top[:k])
    dropped_gaps = tuple(from_fifth(c) for c in ref_top[:k] if c not in cand_top) if finite else ()
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
        top5_swap_gaps_relative=swap_gaps,
        top5_dropped_gaps_relative=dropped_gaps,
    )


def format_value(value: Any) -> str:
    """A metric for people: 6 decimals near 1 (cosines), 4 significant digits otherwise."""
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
            # rounded down, not to nearest: a cosine of 0.9998996 must not read 0.999900 next
            # to the ">= 0.9999" it failed
            return round_down(value, 6)
        return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


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
        return f"{self.name} {format_value(self.value)} vs {self.tolerance}: {status}"


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


def _top5_check(metrics: Metrics, tol: Tolerances, relative_only: bool) -> Check:
    """Overlap as sets; under random weights a swap counts as agreement when the class that
    came in and the one it pushed out both lie within top1_margin_relative std of the
    reference's 5th: near-flat logits tie at rank 5 as at rank 1, but losing a clear leader
    is no tie. A model of fewer than 5 classes (a fine-tuned checkpoint) has fewer to share."""
    want = min(tol.min_top5_overlap, len(metrics.reference_top))
    limit = tol.top1_margin_relative
    ties = (
        min(
            sum(g <= limit for g in metrics.top5_swap_gaps_relative),
            sum(g <= limit for g in metrics.top5_dropped_gaps_relative),
        )
        if relative_only and limit > 0
        else 0
    )
    tolerance = f">= {want}"
    if ties:
        tolerance += f" ({ties} swapped within {limit:g} std of the reference's 5th: near-ties)"
    return Check(
        "top5_overlap", metrics.top5_overlap, tolerance, metrics.top5_overlap + ties >= want
    )


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
        _top5_check(metrics, tol, relative_only),
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
    try:
        metrics = compare(reference, candidate)
    except ValueError as exc:
        raise ValueError(f"{combo} on {image} ({mode}): {exc}") from None
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
