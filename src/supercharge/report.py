"""The session's report: speedup table (like the blog's), accuracy table, JSON and a bar chart.

Measuring is pytest-benchmark's job, judging agreement.py's (accuracy_report.py formats its
rows); this module turns what they recorded into tables and files. Speedups are ratios measured
in one run: every case against PyTorch eager fp32 with timm's transform on the same device,
model, batch size and timing group, timed around the case itself where the grid paired them
(timing.time_call's `reference`).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from supercharge.cases import Case, Combo
from supercharge.floors import FloorCheck, SpeedupFloor, check_floors
from supercharge.pace import WORKLOAD, Pace, describe_change
from supercharge.rounding import round_down

END_TO_END = "end-to-end"
MODEL_ONLY = "model"

SPEED_COLUMNS = (
    ("case", "case"),
    ("group", "timed"),
    ("ms_per_image", "ms/image"),
    ("images_per_s", "images/s"),
    ("speedup", "speedup"),
    ("baseline_ms_per_image", "baseline ms/image"),
    ("iqr_ms_per_image", "IQR ms/image"),
    ("rounds", "rounds"),
    ("providers", "ran on"),
)

FLOOR_COLUMNS = (
    ("case", "case"),
    ("speedup", "speedup"),
    ("floor", "floor"),
    ("status", "verdict"),
    ("pattern", "floor pattern"),
)


@dataclass
class Timing:
    """One benchmark's result: the case, what was timed, and the runner's own account of it."""

    case: Case
    group: str  # END_TO_END (decoded images in, host logits out) or MODEL_ONLY
    median_s: float
    iqr_s: float
    rounds: int
    ran: dict[str, Any] = field(default_factory=dict)  # Runner.describe()
    # the case's baseline timed right before and after it (timing.time_call's `reference`)
    paired_baseline_s: float | None = None
    paired_baseline_iqr_s: float | None = None

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.median_s / self.case.batch_size

    @property
    def images_per_s(self) -> float:
        return self.case.batch_size / self.median_s


@dataclass
class SuiteResults:
    """Everything the session measured, in the order it was measured."""

    timings: list[Timing] = field(default_factory=list)
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    pace: Pace | None = None  # the machine's pace at the start and end (supercharge.pace)
    image: dict[str, Any] | None = None  # the benchmark photo (images.image_identity)

    @property
    def empty(self) -> bool:
        return not self.timings and not self.accuracy


# A speedup whose case or baseline spreads wider than this (IQR / median) is flagged: on a shared
# machine one busy second can double a median (seen: a 20 ms baseline measured at 43 ms).
NOISY_SPREAD = 0.10


def _spread(t: Timing) -> float:
    return t.iqr_s / t.median_s if t.median_s > 0 else 0.0


def _baseline(t: Timing, row: Timing | None) -> tuple[float | None, float, str | None]:
    """(baseline seconds, its spread, how it was measured) for the speedup of `t`: the paired
    baseline timed around the case when there is one, else the baseline's own row."""
    if t.paired_baseline_s:
        spread = (t.paired_baseline_iqr_s or 0.0) / t.paired_baseline_s
        return t.paired_baseline_s, spread, "paired"
    if row is None:
        return None, 0.0, None
    return row.median_s, _spread(row), "run"


def _baselines(timings: list[Timing]) -> list[tuple[float | None, float, str | None]]:
    """`_baseline` of each timing, its row found among `timings`."""
    rows = {(t.case.model, t.case.combo, t.case.batch_size, t.group): t for t in timings}
    return [
        _baseline(t, rows.get((t.case.model, t.case.combo.baseline(), t.case.batch_size, t.group)))
        for t in timings
    ]


def shown_speedup(speedup: float) -> str:
    """A speedup as every table and chart prints it: two decimals, rounded down, so a ratio
    never reads as a floor it missed (3.996x is 3.99x here and in the floors table)."""
    return f"{round_down(speedup, 2)}x"


def end_to_end_speedups(timings: list[Timing]) -> dict[str, float]:
    """Case id -> end-to-end speedup, unrounded (what speedup floors judge)."""
    return {
        t.case.id: base / t.median_s
        for t, (base, _, _) in zip(timings, _baselines(timings), strict=True)
        if t.group == END_TO_END and base is not None
    }


def floors_markdown(checks: list[FloorCheck], noisy: frozenset[str] = frozenset()) -> str:
    """The floors that matched a case of this run, met or not (others concern other runs);
    a speedup from `noisy` cases is marked, as in the speed table."""
    shown = [
        {
            **c.as_dict(),
            "floor": f"{c.floor.ratio:g}x",
            "speedup": f"{c.shown_speedup()}x" + (" (noisy)" if c.case in noisy else ""),
            "status": "met" if c.status == "ok" else "NOT met",
        }
        for c in checks
        if c.case is not None and c.speedup is not None
    ]
    return markdown_table(shown, FLOOR_COLUMNS) if shown else ""


def speed_rows(timings: list[Timing]) -> list[dict[str, Any]]:
    """One row per timing with its speedup over the matching baseline (None when the baseline
    was not run in this session: a ratio across sessions would not be honest); `noisy` when the
    case's or the baseline's rounds spread more than NOISY_SPREAD.

    The baseline is the paired one (timed right before and after the case) where the case has
    it, else the baseline's own row of this run (`speedup_basis`: "paired" or "run")."""
    rows = []
    for t, (base, base_spread, basis) in zip(timings, _baselines(timings), strict=True):
        noisy = max(_spread(t), base_spread) > NOISY_SPREAD
        ran = t.ran.get("providers") or [t.ran.get("device", t.case.combo.device)]
        rows.append(
            {
                **t.case.as_dict(),
                "case": t.case.id,
                "group": t.group,
                "median_s": t.median_s,
                "ms_per_image": round(t.ms_per_image, 3),
                # as many decimals as ms/image: the table prints two, none of them invented
                "images_per_s": round(t.images_per_s, 3),
                "speedup": None if base is None else round(base / t.median_s, 4),
                "baseline": t.case.combo.baseline().id,
                "baseline_ms_per_image": (
                    None if base is None else round(1000.0 * base / t.case.batch_size, 3)
                ),
                "speedup_basis": basis,
                "iqr_ms": round(1000.0 * t.iqr_s, 3),  # of the rounds (one batch each)
                # on ms/image's scale, so the two columns compare by eye at any batch size
                "iqr_ms_per_image": round(1000.0 * t.iqr_s / t.case.batch_size, 3),
                "rounds": t.rounds,
                "providers": ",".join(ran[:1]),
                "node_placement": t.ran.get("node_placement", {}),
                "noisy": noisy,
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> str:
    """A GitHub-flavoured Markdown table; also how the terminal shows it."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3g}"
        return str(value)

    header = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    """The blog-style table, fastest first within each group and batch size."""
    parts = []
    for group in (END_TO_END, MODEL_ONLY):
        chosen = [r for r in rows if r["group"] == group]
        if not chosen:
            continue
        chosen.sort(key=lambda r: (r["model"], r["batch_size"], r["median_s"]))
        title = (
            "End to end (decoded uint8 images in, host logits out)"
            if group == END_TO_END
            else "Model alone (inputs already where the runtime wants them)"
        )
        shown = [
            {
                **r,
                "speedup": None
                if r["speedup"] is None
                else shown_speedup(r["speedup"]) + (" (noisy)" if r.get("noisy") else ""),
            }
            for r in chosen
        ]
        parts.append(f"### {title}\n\n{markdown_table(shown, SPEED_COLUMNS)}")
    if any(r.get("speedup_basis") == "paired" for r in rows):
        parts.append(
            "speedup: baseline ms/image (PyTorch eager fp32 with timm's transform, same device "
            "and batch size, timed right before and after the case) / ms/image."
        )
    if any(r.get("noisy") and r["speedup"] is not None for r in rows):
        parts.append(
            f"(noisy): the case's or its baseline's rounds spread (IQR) more than "
            f"{NOISY_SPREAD:.0%} of the median, so the machine was busy: rerun before trusting "
            "that ratio."
        )
    return "\n\n".join(parts)


def bar_chart(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Images/s per end-to-end case, one panel per batch size (matplotlib, headless)."""
    chosen = [r for r in rows if r["group"] == END_TO_END]
    if not chosen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in chosen})
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(7 * len(sizes), 0.35 * len(chosen) + 2), squeeze=False
    )
    for ax, n in zip(axes[0], sizes, strict=True):
        panel = sorted((r for r in chosen if r["batch_size"] == n), key=lambda r: r["images_per_s"])
        labels = [f"{r['backend']} {r['preprocess']} {r['precision']}" for r in panel]
        baseline = [Combo(r["backend"], r["preprocess"], r["precision"]).is_baseline for r in panel]
        colors = ["tab:gray" if b else "tab:blue" for b in baseline]
        ax.barh(labels, [r["images_per_s"] for r in panel], color=colors)
        for y, r in enumerate(panel):
            note = f" {shown_speedup(r['speedup'])}" if r["speedup"] is not None else ""
            ax.text(r["images_per_s"], y, note, va="center", fontsize=8)
        ax.set_xlim(0, 1.15 * max(r["images_per_s"] for r in panel))  # room for the labels
        ax.set_title(f"{panel[0]['model']} batch {n}: images/s, end to end")
        ax.set_xlabel("images/s (higher is better)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_cuda_build() -> str | None:
    """The CUDA version torch was built for (None: a CPU-only build), GPU or not."""
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def machine_info() -> dict[str, Any]:
    """What a compared run needs to know: CPU, GPU, driver and every runtime's version."""
    from supercharge.gpu import gpu_info, tf32_override
    from supercharge.malloc import malloc_state

    ort = next(
        (v for d in ("onnxruntime-gpu", "onnxruntime") if (v := _version(d)) is not None), None
    )
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": _version("torch"),
        "timm": _version("timm"),
        "onnx": _version("onnx"),
        "onnxruntime": ort,
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu13"),
        "pillow": _version("pillow"),
        "numpy": _version("numpy"),
        "torch_cuda_build": _torch_cuda_build(),
        "malloc": malloc_state(),  # CPU timings depend on it (supercharge.malloc)
    }
    info.update(gpu_info())
    if info.get("gpu_name"):  # "0": fp32 is strict fp32 in TensorRT too (gpu.forbid_tf32)
        info["nvidia_tf32_override"] = tf32_override()
    return info


def write_report(
    results: SuiteResults,
    folder: Path,
    floors: Sequence[SpeedupFloor] = (),
    status: str | None = None,
) -> tuple[list[Path], str]:
    """Write speed.{md,json,png} and accuracy.{md,json} into `folder`; return the paths and the
    text for the terminal. Files are replaced whole (temp file + rename), never half-written.
    `floors` (floors.load_floors) are checked against the end-to-end speedups and reported:
    a floor not met is shown, not raised (`supercharge gate --min-speedup` fails on it)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # an interrupted or failing session says so at the top of every file
    said = f"\n\n**{status}**" if status else ""
    # A run with no timed case or no accuracy gate leaves the other kind's files (gpu_grid.sh
    # writes speed and gates in two runs into one folder): kept, never lost, but named
    beside = _earlier_files(folder, timed=bool(results.timings), judged=bool(results.accuracy))
    if beside:
        said += f"\n\n{beside}"
    written: list[Path] = []
    text_parts: list[str] = []
    info = machine_info()
    where = f"{info['cpu_model']} ({info['cpu_count']} cores)" + (
        f", {info['gpu_name']}" if info.get("gpu_name") else ""
    )
    if results.timings:
        rows = speed_rows(results.timings)
        table = speed_markdown(rows)
        checks = [
            c
            for c in check_floors(end_to_end_speedups(results.timings), floors)
            if c.case is not None
        ]
        if checks:
            table += (
                "\n\n### Speedup floors ([tool.supercharge.speedup_floors])\n\n"
                + floors_markdown(
                    checks,
                    frozenset(r["case"] for r in rows if r["group"] == END_TO_END and r["noisy"]),
                )
            )
        if results.pace is not None:
            table += "\n\n" + pace_markdown(results.pace)
        if results.image is not None:
            from supercharge.images import describe_identity

            table = (
                f"Timed on {describe_identity(results.image)}, repeated to fill each batch.\n\n"
                + table
            )
        text_parts.append(f"## Speed ({where})\n\n{table}")
        doc = (
            f"# Speed report\n\n{stamp}, {where}{said}\n\nSpeedup: the case's median against "
            "PyTorch eager fp32 with timm's preprocessing on the same device, model, batch size "
            f"and timing group, measured in the same run.\n\n{table}\n"
        )
        written.append(_atomic_write(folder / "speed.md", doc))
        payload = {
            "created": stamp,
            "status": status,
            "machine_info": info,
            "rows": rows,
            "floors": [c.as_dict() for c in checks],
            "pace": results.pace.as_dict() if results.pace is not None else None,
            "image": results.image,
        }
        written.append(_atomic_write(folder / "speed.json", json.dumps(payload, indent=2)))
        chart = bar_chart(rows, folder / "speed.png")
        if chart is not None:
            written.append(chart)
        else:  # no end-to-end rows: an earlier run's chart must not pass for this one's
            (folder / "speed.png").unlink(missing_ok=True)
    if results.accuracy:
        from supercharge.accuracy_report import accuracy_markdown

        table = accuracy_markdown(results.accuracy)
        text_parts.append(f"## Accuracy against PyTorch fp32 + timm preprocessing\n\n{table}")
        doc = f"# Accuracy report\n\n{stamp}, {where}{said}\n\n{table}\n"
        written.append(_atomic_write(folder / "accuracy.md", doc))
        payload = {
            "created": stamp,
            "status": status,
            "machine_info": info,
            "rows": results.accuracy,
        }
        written.append(
            _atomic_write(folder / "accuracy.json", json.dumps(payload, indent=2, default=str))
        )
    if beside:
        text_parts.append(beside)
    return written, "\n\n".join(text_parts)


def _earlier_files(folder: Path, timed: bool, judged: bool) -> str | None:
    """A line naming the report files in `folder` that this run leaves from an earlier run."""
    notes = []
    for produced, name, what in (
        (timed, "speed", "timed no case"),
        (judged, "accuracy", "ran no accuracy gate"),
    ):
        if produced or not (folder / f"{name}.json").is_file():
            continue
        try:
            created = json.loads((folder / f"{name}.json").read_text())["created"]
        except (OSError, ValueError, KeyError, TypeError):
            created = "date unknown"
        notes.append(f"{name}.* there are an earlier run's ({created}): this run {what}")
    return f"Beside this report in {folder}: " + "; ".join(notes) + "." if notes else None


def pace_markdown(pace: Pace) -> str:
    """The machine's pace at both ends of the run and between its cases, and whether it held."""
    end = "not measured" if pace.end_ms is None else f"{pace.end_ms:.2f} ms at the end"
    line = f"Machine pace ({WORKLOAD}): {pace.start_ms:.2f} ms at the start, {end}"
    if pace.during_ms:
        low, high = min(pace.during_ms), max(pace.during_ms)
        probes = len(pace.during_ms)
        spread = f"{low:.2f} ms" if probes == 1 else f"{low:.2f}-{high:.2f} ms"
        line += f", {spread} at {probes} probe{'s' if probes != 1 else ''} between cases"
    change = pace.change()
    if change is None:
        return line + "."
    return f"{line}; {describe_change(change, 'during the run')}."


def _atomic_write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
