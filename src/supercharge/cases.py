"""The suite's grid as plain data: which backend x preprocessing x precision x batch cases exist.

The benchmark grid (perf/) and the accuracy gates (accuracy/) enumerate the same cases, filtered
by the same pytest options, so a combination is either timed and judged or neither. Validity is
decided from the backend registry (runners.base.BACKENDS), never typed per case.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from supercharge.errors import SuperchargeError
from supercharge.pipeline import BAKED, PREPROCESS
from supercharge.runners.base import BACKENDS

DEFAULT_BATCH_SIZES = (1, 8)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Combo:
    """A backend, a preprocessing and a precision: one pipeline, whatever the batch size."""

    backend: str
    preprocess: str
    precision: str

    @property
    def graph(self) -> str:
        """The ONNX graph the runner loads: the plain export or a merged preprocessing graph."""
        return self.preprocess if self.preprocess in BAKED else "model"

    @property
    def device(self) -> str:
        return BACKENDS[self.backend].device

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.preprocess}-{self.precision}"

    def baseline(self) -> Combo:
        """What this combination is measured against: PyTorch eager fp32 with timm's transform,
        on the same device."""
        return Combo(f"torch-{self.device}", "timm", "fp32")

    @property
    def is_baseline(self) -> bool:
        return self == self.baseline()


@dataclass(frozen=True)
class Case:
    """One benchmark case: a combination on one model at one batch size."""

    model: str
    combo: Combo
    batch_size: int

    @property
    def id(self) -> str:
        """Reads like `tf_efficientnet_lite0-ort-cpu-baked-fp32-bs1`."""
        return f"{self.model}-{self.combo.id}-bs{self.batch_size}"

    def as_dict(self) -> dict:
        return {"model": self.model, **asdict(self.combo), "batch_size": self.batch_size}


def invalid_reason(backend: str, preprocess: str, precision: str) -> str | None:
    """Why a combination cannot exist on any machine (None when it can)."""
    spec = BACKENDS.get(backend)
    if spec is None:
        return f"unknown backend {backend!r}"
    if preprocess not in PREPROCESS:
        return f"unknown preprocessing {preprocess!r}"
    if precision not in spec.precisions:
        return f"{backend} does not run {precision}"
    if preprocess in BAKED and not spec.onnx:
        return f"{preprocess} preprocessing lives in an ONNX graph; {backend} does not run ONNX"
    if preprocess == "cupy" and spec.device != "cuda":
        return f"cupy preprocessing produces device arrays; {backend} runs on the host"
    if preprocess == "seed" and precision != spec.precisions[0]:
        return "the seed preprocessing is shown at the backend's default precision only"
    return None


def combos(
    backends: Iterable[str] | None = None,
    preprocess: Iterable[str] | None = None,
    precisions: Iterable[str] | None = None,
) -> list[Combo]:
    """Every valid combination within the filters (None: no filter), in registry order."""
    chosen_b = _checked("backend", backends, tuple(BACKENDS))
    chosen_p = _checked("preprocessing", preprocess, PREPROCESS)
    chosen_x = _checked("precision", precisions, PRECISIONS)
    return [
        Combo(b, p, x)
        for b in chosen_b
        for p in chosen_p
        for x in BACKENDS[b].precisions
        if x in chosen_x and invalid_reason(b, p, x) is None
    ]


def grid(model: str, combinations: Sequence[Combo], batch_sizes: Sequence[int]) -> list[Case]:
    """Cases ordered so one pipeline serves consecutive cases (batch size varies fastest)."""
    return [Case(model, c, n) for c in combinations for n in batch_sizes]


def parse_list(text: str | None) -> list[str] | None:
    """A comma-separated option value; empty or 'all' means no filter."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise SuperchargeError(
            f"{text!r} names nothing: give comma-separated names, or leave the option out for all"
        )
    return items


def parse_batch_sizes(text: str | None) -> tuple[int, ...]:
    """'1,8' -> (1, 8); a one-line error for anything but positive integers."""
    if text is None or not text.strip():
        return DEFAULT_BATCH_SIZES
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise SuperchargeError(
            f"--batch-sizes {text!r} is not a list of positive integers: use e.g. --batch-sizes 1,8"
        )
    most = max(sizes)
    ram = physical_memory()
    if ram is not None and most * MIN_IMAGE_BYTES > ram:
        need = most * MIN_IMAGE_BYTES / 2**30
        raise SuperchargeError(
            f"--batch-sizes {most}: that many images alone need {need:.1f} GiB, this machine has"
            f" {ram / 2**30:.1f} GiB: use at most {ram // MIN_IMAGE_BYTES} (and far fewer for"
            " the model's activations)"
        )
    return tuple(dict.fromkeys(sizes))


MIN_IMAGE_BYTES = 224 * 224 * 3  # a batch holds at least one 224x224 uint8 RGB image per item


def physical_memory() -> int | None:
    """Bytes of RAM, where the OS says (POSIX sysconf); None elsewhere or when indeterminate."""
    try:
        page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    return page * pages if page > 0 and pages > 0 else None  # -1 means "indeterminate"


def _checked(what: str, chosen: Iterable[str] | None, known: Sequence[str]) -> tuple[str, ...]:
    if chosen is None:
        return tuple(known)
    chosen = tuple(chosen)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise SuperchargeError(
            f"unknown {what} {', '.join(map(repr, unknown))}: choose from {', '.join(known)}"
        )
    return tuple(k for k in known if k in chosen)  # registry order: stable ids and grouping
