"""The merge gate: compare two saved pytest-benchmark runs case by case and name regressions.

Shared CI runners drift, so the default judges each case's speedup over its own run's baseline
(PyTorch eager fp32 + timm on the same device and batch size), timed right before and after the
case: a ratio of neighbours in time, which machine-wide slowdowns cancel out of. `--stat median`
compares absolute medians instead, and when both runs saved their raw rounds
(--benchmark-save-data) a slowdown must also be significant (one-sided Mann-Whitney U, scipy) so
one noisy round cannot fail a merge.
Unlike --benchmark-compare-fail, this never touches saved runs: a regressed run cannot silently
become the next baseline.
Speedup floors (floors.py, `--min-speedup`) judge the current run on its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supercharge.errors import SuperchargeError
from supercharge.floors import SpeedupFloor, check_floors
from supercharge.pace import Pace, describe_change
from supercharge.report import END_TO_END, NOISY_SPREAD

BASELINE = ("timm", "fp32")  # the reference preprocessing and precision, on the case's device


@dataclass(frozen=True)
class Verdict:
    key: str  # case id and timed group
    baseline: float | None  # the compared quantity in the baseline run
    current: float | None
    change: float | None  # fraction: +0.12 = 12% worse
    status: str  # "ok", "regressed", "missing", "new", "no-baseline", "below-target",
    # "unmatched" (a speedup floor no case matched), "not-run" (the same, for a floor from a file)
    note: str = ""
    limit: float | None = None  # the --max-slowdown fraction the change was judged against

    def line(self) -> str:
        # more digits where 4 would print two different values alike ("4 -> 4 below-target")
        digits, pair = 4, (self.baseline, self.current)
        while None not in pair and pair[0] != pair[1] and digits < 17:
            if f"{pair[0]:.{digits}g}" != f"{pair[1]:.{digits}g}":
                break
            digits += 1

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.{digits}g}"

        change = "" if self.change is None else f" {_percent(self.change, self.limit)}"
        note = f"  ({self.note})" if self.note else ""
        return (
            f"{self.status:<11} {self.key}: {fmt(self.baseline)} -> {fmt(self.current)}"
            f"{change}{note}"
        )


def _exceeds(change: float, limit: float) -> bool:
    """A slowdown past the limit; 1e-9 absorbs float error, so speedups 4.4 -> 4.0 are 10%,
    not the 10.000000000000009% that 4.4 / 4.0 - 1 computes."""
    return change > limit + 1e-9


def _percent(change: float, limit: float | None) -> str:
    """`change` as a percent, with more decimals where one would print it on the other side of
    `limit` (+10.04% regressed at --max-slowdown 10 would read "+10.0%")."""
    for digits in range(1, 7):
        shown = f"{change * 100:+.{digits}f}"
        if limit is None or _exceeds(float(shown) / 100, limit) == _exceeds(change, limit):
            break
    return shown + "%"


def load_run(path: Path) -> dict[str, Any]:
    """A pytest-benchmark JSON file, or the newest one under a folder (e.g. .benchmarks)."""
    path = Path(path)
    if path.is_dir():
        # regular files only (following links): a dangling link or a folder named *.json is
        # not a run, and stat() of the first would fail mid-sort
        files = sorted(
            (p for p in path.rglob("*.json") if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        if not files:
            raise SuperchargeError(
                f"{path} holds no pytest-benchmark JSON: run the suite with "
                "--benchmark-autosave or --benchmark-json first"
            )
        path = files[-1]
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SuperchargeError(f"{path}: no such file: give a pytest-benchmark JSON") from None
    except (OSError, ValueError) as exc:
        raise SuperchargeError(
            f"{path} is not readable JSON ({exc}): give a pytest-benchmark JSON"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise SuperchargeError(
            f"{path} is not a pytest-benchmark run (no 'benchmarks' list): "
            "give a file written by --benchmark-json or --benchmark-autosave"
        )
    _check_run(path, data)
    # a case the run was interrupted in (rounds or its paired baseline unfinished) is not a
    # measurement: left out, so it reads as missing rather than as a timing
    data["benchmarks"] = [
        b for b in data["benchmarks"] if (b.get("extra_info") or {}).get("complete", True)
    ]
    data["_path"] = str(path)
    return data


_RERUN = (
    "it is not a pytest-benchmark JSON from this suite: rerun the suite with --benchmark-json "
    "or --benchmark-autosave to produce it"
)
_TEXT_INFO = ("case", "timed", "backend", "model", "preprocess", "precision", "device")


def _finite(value: Any) -> bool:
    """A finite JSON number (not a bool, which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    """A time or ratio the gate divides by."""
    return _finite(value) and value > 0


def _entry_problem(bench: Any) -> str | None:
    """What makes one benchmark entry unusable by the gate, or None: checked once at load so
    comparing never meets a KeyError, a string median or a zero to divide by."""
    if not isinstance(bench, dict):
        return "is not a JSON object"
    if not isinstance(bench.get("name"), str) or not bench["name"]:
        return "has no name"
    if bench.get("fullname") is not None and not isinstance(bench["fullname"], str):
        return "has a fullname that is not text"
    stats = bench.get("stats")
    if not isinstance(stats, dict) or not _positive(stats.get("median")):
        return "has no stats.median that is a positive, finite number of seconds"
    data = stats.get("data")
    rounds_ok = isinstance(data, list) and all(_finite(t) and t >= 0 for t in data)
    if data is not None and not rounds_ok:
        return "has stats.data that is not a list of non-negative, finite seconds"
    info = bench.get("extra_info")
    if info is None:
        return None
    if not isinstance(info, dict):
        return "has extra_info that is not a JSON object"
    for field in _TEXT_INFO:
        if info.get(field) is not None and not isinstance(info[field], str):
            return f"has extra_info.{field} that is not text"
    size = info.get("batch_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        return "has extra_info.batch_size that is not an integer"
    if info.get("timed") is not None and info.get("case") is None:
        return "has extra_info.timed but no extra_info.case"
    if info.get("paired_speedup") is not None and not _positive(info["paired_speedup"]):
        return "has extra_info.paired_speedup that is not a positive, finite number"
    if info.get("paired_baseline_s") is not None and not _positive(info["paired_baseline_s"]):
        return "has extra_info.paired_baseline_s that is not a positive, finite number of seconds"
    return None


def _check_run(path: Path, data: dict[str, Any]) -> None:
    """Refuse a run the gate cannot judge, naming the file and the entry (by name, else by
    position), instead of a traceback halfway through a comparison."""
    for field in ("machine_info", "supercharge"):
        if data.get(field) is not None and not isinstance(data[field], dict):
            raise SuperchargeError(f"{path}: {field} is not a JSON object; {_RERUN}")
    for index, bench in enumerate(data["benchmarks"]):
        problem = _entry_problem(bench)
        if problem is None:
            continue
        name = bench.get("name") if isinstance(bench, dict) else None
        label = f"benchmark {name!r}" if isinstance(name, str) and name else f"benchmark #{index}"
        raise SuperchargeError(f"{path}: {label} {problem}; {_RERUN}")


def _key(bench: dict[str, Any]) -> str:
    info = bench.get("extra_info") or {}
    if "case" in info and "timed" in info:
        return f"{info['case']} [{info['timed']}]"
    return bench.get("fullname") or bench["name"]


def _speedups(run: dict[str, Any]) -> dict[str, float]:
    """Each case's speedup over its own run's baseline (same model, device, batch, group): the
    paired one timed around the case where the run recorded it, else the baseline's own row."""
    medians: dict[tuple, float] = {}
    for b in run["benchmarks"]:
        if _is_baseline(b):
            info = b["extra_info"]
            device = info["backend"].split("-", 1)[1]
            key = (info.get("model"), device, info.get("batch_size"), info.get("timed"))
            medians[key] = b["stats"]["median"]
    out = {}
    for b in run["benchmarks"]:
        info = b.get("extra_info") or {}
        paired = _paired_speedup(b)
        if paired is not None:  # its baseline timed right around it (timing.time_call)
            out[_key(b)] = paired
            continue
        device = "cpu" if str(info.get("device", "cpu")).startswith("cpu") else "cuda"
        base = medians.get((info.get("model"), device, info.get("batch_size"), info.get("timed")))
        if base is not None:
            out[_key(b)] = base / b["stats"]["median"]
    return out


def _paired_speedup(bench: dict[str, Any]) -> float | None:
    """The paired baseline's seconds over the median pytest-benchmark stored, as the report
    divides them: the verdict follows the stored stats, not a ratio cached beside them
    (`paired_speedup`, used only where a run saved no paired seconds). None: not paired."""
    info = bench.get("extra_info") or {}
    if info.get("paired_baseline_s"):
        return info["paired_baseline_s"] / bench["stats"]["median"]
    return float(info["paired_speedup"]) if info.get("paired_speedup") else None


def _is_baseline(bench: dict[str, Any]) -> bool:
    """Whether the entry is a PyTorch eager fp32 + timm row: every speedup's reference, so its
    own is 1 in any run and a slower baseline (which raises its cases' ratios) passes unseen."""
    info = bench.get("extra_info") or {}
    reference = (info.get("preprocess"), info.get("precision")) == BASELINE
    return reference and str(info.get("backend", "")).startswith("torch-")


def _noisy(bench: dict[str, Any]) -> bool:
    """Whether a case's speedup is marked (noisy) in its run's report: its rounds' or its paired
    baseline's IQR above NOISY_SPREAD of the median. Named in the verdict, never changing it."""
    info, stats = bench.get("extra_info") or {}, bench["stats"]
    iqr, median = stats.get("iqr"), stats.get("median")
    spreads = [iqr / median if isinstance(iqr, (int, float)) and median else 0.0]
    paired, paired_iqr = info.get("paired_baseline_s"), info.get("paired_baseline_iqr_s")
    if isinstance(paired, (int, float)) and isinstance(paired_iqr, (int, float)) and paired:
        spreads.append(paired_iqr / paired)
    return max(spreads) > NOISY_SPREAD


def _significantly_slower(base: list[float], cur: list[float], alpha: float) -> bool | None:
    """One-sided Mann-Whitney U: are the current rounds slower? None without raw rounds."""
    if len(base) < 5 or len(cur) < 5:
        return None
    from scipy.stats import mannwhitneyu

    return bool(mannwhitneyu(cur, base, alternative="greater").pvalue < alpha)


def compare(
    baseline: dict[str, Any],
    current: dict[str, Any],
    max_slowdown: float = 0.10,
    stat: str = "speedup",
    alpha: float = 0.01,
) -> list[Verdict]:
    """One verdict per case of either run; `max_slowdown` is a fraction (0.10 = 10%)."""
    if stat not in ("speedup", "median"):
        raise SuperchargeError(f"--stat {stat!r}: choose speedup or median")
    if not (math.isfinite(max_slowdown) and max_slowdown >= 0):  # nan would pass every case
        raise SuperchargeError(
            f"--max-slowdown {max_slowdown * 100:g}: give a finite, non-negative percent, e.g. 10"
        )
    base_b = {_key(b): b for b in baseline["benchmarks"]}
    cur_b = {_key(b): b for b in current["benchmarks"]}
    base_s, cur_s = _speedups(baseline), _speedups(current)
    verdicts = []

    def value(key: str, runs: dict[str, Any], speedups: dict[str, float]) -> float | None:
        """The compared quantity of a case only one run has, shown beside its verdict."""
        return speedups.get(key) if stat == "speedup" else runs[key]["stats"]["median"]

    for key in sorted(base_b.keys() | cur_b.keys()):
        if key not in cur_b:
            was = value(key, base_b, base_s)
            verdicts.append(Verdict(key, was, None, None, "missing", "not run in current"))
            continue
        if key not in base_b:
            now = value(key, cur_b, cur_s)
            verdicts.append(Verdict(key, None, now, None, "new", "not in the baseline run"))
            continue
        if stat == "speedup":
            if key not in base_s or key not in cur_s:
                verdicts.append(
                    Verdict(key, None, None, None, "no-baseline", "its run lacks torch timm fp32")
                )
                continue
            b, c = base_s[key], cur_s[key]
            change = b / c - 1.0  # speedup fell by this fraction
            bad = _exceeds(change, max_slowdown)
            noisy = [
                w for w, bench in (("base", base_b[key]), ("current", cur_b[key])) if _noisy(bench)
            ]
            note = "speedup" + (f"; noisy in {' and '.join(noisy)}: rerun" if noisy else "")
            if _is_baseline(cur_b[key]):
                note += "; the baseline itself, 1x by definition: judge its time with --stat median"
            verdicts.append(
                Verdict(key, b, c, change, "regressed" if bad else "ok", note, max_slowdown)
            )
        else:
            b, c = base_b[key]["stats"]["median"], cur_b[key]["stats"]["median"]
            change = c / b - 1.0
            bad = _exceeds(change, max_slowdown)
            note = "median s"
            if bad:
                sig = _significantly_slower(
                    base_b[key]["stats"].get("data") or [],
                    cur_b[key]["stats"].get("data") or [],
                    alpha,
                )
                if sig is False:
                    bad, note = False, f"median s; not significant at p<{alpha}"
            verdicts.append(
                Verdict(key, b, c, change, "regressed" if bad else "ok", note, max_slowdown)
            )
    return verdicts


def check_comparable(
    verdicts: list[Verdict], baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    """Raise when `compare` judged no case, or left a shared case unjudged (no speedup in one
    run): comparing nothing is a mix-up of inputs (exit 2), neither a pass nor a regression of
    the code (exit 1), whatever --allow-missing says; an unjudged case would pass unseen."""
    unjudged = [v.key for v in verdicts if v.status == "no-baseline"]
    if not unjudged and any(v.status in ("ok", "regressed") for v in verdicts):
        return
    base, cur = baseline.get("_path", "the baseline"), current.get("_path", "the current run")
    if not unjudged:
        raise SuperchargeError(
            f"{base} and {cur} share no case: compare two runs of the same grid (same models, "
            "backends, preprocessing, precisions and batch sizes)"
        )
    lacking = [r.get("_path", "a run") for r in (baseline, current) if not _speedups(r)]
    if len(lacking) == 2:
        who = "neither run has"
    elif lacking:
        who = f"{lacking[0]} has no"
    else:
        who = "the runs do not both have"
    what = (
        "cases but no speedup"
        if len(unjudged) == len(verdicts)
        else (f"{len(unjudged)} cases without a speedup (e.g. {unjudged[0]})")
    )
    raise SuperchargeError(
        f"{base} and {cur} share {what} to compare: {who} PyTorch eager fp32+timm "
        "baseline rows for them; use --stat median to compare absolute medians, or rerun with "
        "the torch timm fp32 baseline cases"
    )


def machine_differences(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The machine facts that differ between the runs (absolute medians then mean little)."""
    a, b = baseline.get("machine_info") or {}, current.get("machine_info") or {}
    keys = (
        "cpu_model",
        "cpu_count",
        "gpu_name",
        "driver",
        "cuda_runtime",
        "cudnn",
        "torch",
        "torch_cuda_build",
        "timm",
        "onnx",  # builds every exported graph
        "pillow",  # resizes in the baseline's timm transform
        "numpy",  # the numpy preprocessing path
        "onnxruntime",
        "tensorrt",
        "malloc",
        "ort_cuda_graph",
    )
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in keys if a.get(k) != b.get(k)]


def run_image(run: dict[str, Any]) -> dict[str, Any] | None:
    """The benchmark photo a run timed (the suite's `supercharge.image` entry), if recorded."""
    image = (run.get("supercharge") or {}).get("image")
    return image if isinstance(image, dict) and image.get("sha256") else None


def check_same_image(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise when the runs timed different photos: preprocessing's cost follows the image size,
    so every end-to-end ratio moves with it and the comparison says nothing about the code. A
    run saved before the photo was recorded timed the default photo: it compares only with a
    run of that photo (by name and size, as its hash was not saved)."""
    from supercharge.images import DEFAULT_BENCHMARK_IMAGE, describe_identity

    base, cur = run_image(baseline), run_image(current)
    if base is not None and cur is not None:
        same = base["sha256"] == cur["sha256"]
    else:
        recorded = base or cur or DEFAULT_BENCHMARK_IMAGE
        same = all(recorded.get(k) == v for k, v in DEFAULT_BENCHMARK_IMAGE.items())
    if same:
        return
    unrecorded = "the default {name} ({width}x{height}; not recorded)"
    said = [
        describe_identity(i) if i else unrecorded.format(**DEFAULT_BENCHMARK_IMAGE)
        for i in (base, cur)
    ]
    raise SuperchargeError(
        f"{baseline.get('_path', 'the baseline')} timed {said[0]} and "
        f"{current.get('_path', 'the current run')} timed {said[1]}: compare "
        "runs of the same --image"
    )


def run_pace(run: dict[str, Any]) -> Pace | None:
    """The machine's pace a run was saved with (the suite's `supercharge.pace` entry), if any."""
    return Pace.from_dict(((run.get("supercharge") or {}).get("pace")) or None)


def pace_notes(current: dict[str, Any], baseline: dict[str, Any] | None = None) -> list[str]:
    """What the machine's pace says about the verdicts: whether it changed during the current
    run, and between the runs. Notes only: a verdict stands (the pace cannot tell how much of
    a slowdown was the machine), but a reader knows to rerun before believing it."""
    notes = []
    cur = run_pace(current)
    if cur is not None and cur.change() is not None:
        notes.append(describe_change(cur.change(), "during the current run"))
    if baseline is not None:
        base = run_pace(baseline)
        if base is None or cur is None:
            missing = "baseline" if base is None else "current run"
            notes.append(f"machine pace: not recorded in the {missing} (saved by an older suite)")
        else:
            # a slow phase in the baseline run moves its ratios as much as one in the current
            if base.change() is not None:
                notes.append(describe_change(base.change(), "during the baseline run"))
            notes.append(
                describe_change(cur.mean_ms() / base.mean_ms() - 1.0, "baseline -> current")
            )
    return notes


def floor_verdicts(
    run: dict[str, Any], floors: list[SpeedupFloor], required: bool = True
) -> list[Verdict]:
    """`run`'s end-to-end cases held to `floors`: "ok", "below-target", or for a floor no case
    with a speedup matches "unmatched" (required: a case left out of the grid cannot pass it)
    or "not-run" (floors from a file, which may concern other models)."""
    speedups = _speedups(run)
    cases: dict[str, float] = {}
    unjudged: list[str] = []  # end-to-end cases whose speedup the run cannot give (no baseline)
    for b in run["benchmarks"]:
        info = b.get("extra_info") or {}
        if info.get("timed") != END_TO_END:
            continue
        if _key(b) in speedups:
            cases[info["case"]] = speedups[_key(b)]
        else:
            unjudged.append(info.get("case", ""))
    if required and floors and not cases and unjudged:
        raise SuperchargeError(
            f"{run.get('_path', 'the run')} has no speedups to hold to a floor: its "
            f"{len(unjudged)} end-to-end cases lack their PyTorch eager fp32+timm baseline rows; "
            "rerun with the torch timm fp32 cases (not filtered out by --backends, --preprocess "
            "or --precisions)"
        )
    verdicts = []
    for check in check_floors(cases, floors):
        note = f"target {check.floor.ratio:g}x"
        if check.case is None:
            lacking = sum(check.floor.matches(case) for case in unjudged)
            why = f"{lacking} matching lack their baseline" if lacking else "no case matches"
            key, note = f"{check.floor.pattern} [{END_TO_END}]", f"{note}; {why}"
            if not required and not lacking:  # a case of this run that it cannot judge fails
                verdicts.append(Verdict(key, check.floor.ratio, None, None, "not-run", note))
                continue
        else:
            key = f"{check.case} [{END_TO_END}]"
        verdicts.append(Verdict(key, check.floor.ratio, check.speedup, None, check.status, note))
    return verdicts
