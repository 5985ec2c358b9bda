"""The accuracy report: agreement rows (supercharge.agreement) as text for people.

A failing test prints format_row (both top-5 lists side by side, every metric next to its
tolerance); the session's accuracy.md and terminal summary are accuracy_markdown (one line per
combination, worst case over its images). Both read only the plain JSON rows, so what a test
says and what the report says cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from supercharge.agreement import format_value
from supercharge.tolerances import Tolerances


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
        lines.append(f"{status} {c['name']:<{width}}{format_value(c['value']):<12}{c['tolerance']}")
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
        "top_k": min(len(r["reference_top5"]) for r in rows),  # < 5 for a model of < 5 classes
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
            f"{s['top5']}/{s['top_k']}",
            format_value(s["cosine"]),
            "-" if s["max_prob"] is None else format_value(s["max_prob"]),
            "-" if s["median_prob"] is None else format_value(s["median_prob"]),
            format_value(s["rel_logit"]),
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
    photos = sorted({r["image"] for r in rows})
    calibrated = sorted(
        {r["ran"]["calibration"] for r in rows if "calibration" in r.get("ran", {})}
    )
    int8 = f" int8 calibrated on {', '.join(calibrated)}." if calibrated else ""
    out = [
        f"{model}{weights} against PyTorch CPU fp32 + timm preprocessing, on each of "
        f"{len(photos)} photos ({', '.join(photos)}) alone and all in one batch; judged by "
        f"{mode}.{int8} dp: softmax probability error; dlogit/std: logit error over the "
        "reference logits' std (gated for random weights only).",
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
            f"{format_value(seen['cosine'])}; min top-5 overlap {seen['top5']}/{seen['top_k']}."
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
