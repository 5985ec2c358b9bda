"""The preprocessing spec: timm's eval transform as plain data, and its geometry.

Everything comes from `timm.data.resolve_model_data_config(model)`; nothing is typed by hand.
The geometry functions reproduce, integer for integer, what timm's `transforms_imagenet_eval`
(torchvision Resize / CenterCrop, timm ResizeKeepRatio / CenterCropOrPad) does to an image of a
given size, including Python's round-half-to-even where torchvision uses `round`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supercharge.errors import SuperchargeError

CROP_MODES = ("center", "squash", "border")
DEFAULT_CROP_PCT = 0.875  # timm's DEFAULT_CROP_PCT, used only when the config has none


@dataclass(frozen=True)
class Geometry:
    """What happens to one image: resize to `resized`, then pad, then crop `box` from it."""

    resized: tuple[int, int]  # (h, w) after the resize
    pad: tuple[int, int, int, int]  # (left, top, right, bottom) added after the resize
    top: int  # crop origin in the padded image
    left: int
    out: tuple[int, int]  # (h, w) of the crop = the model's input size


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: tuple[int, int]  # (h, w)
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_data_config(cls, cfg: Mapping[str, Any]) -> PreprocessSpec:
        _, h, w = cfg["input_size"]
        mode = cfg.get("crop_mode") or "center"
        if mode not in CROP_MODES:
            raise ValueError(f"crop_mode {mode!r} is not one of {CROP_MODES}")
        return cls(
            input_size=(int(h), int(w)),
            interpolation=str(cfg.get("interpolation") or "bilinear"),
            crop_pct=float(cfg.get("crop_pct") or DEFAULT_CROP_PCT),
            crop_mode=mode,
            mean=tuple(float(m) for m in cfg["mean"]),  # type: ignore[arg-type]
            std=tuple(float(s) for s in cfg["std"]),  # type: ignore[arg-type]
        )

    def as_data_config(self) -> dict[str, Any]:
        """Back to the keyword arguments of timm.data.create_transform."""
        return {
            "input_size": (3, *self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "mean": self.mean,
            "std": self.std,
        }

    @property
    def scale_size(self) -> tuple[int, int]:
        return (
            math.floor(self.input_size[0] / self.crop_pct),
            math.floor(self.input_size[1] / self.crop_pct),
        )

    @property
    def fill(self) -> tuple[int, int, int]:
        """Pad colour: round(255 * mean) in border mode (timm), black otherwise (torchvision)."""
        if self.crop_mode != "border":
            return (0, 0, 0)
        return tuple(round(255 * m) for m in self.mean)  # type: ignore[return-value]

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) the resize step produces for an h x w image; a side that rounds to 0 (a thin
        strip keeping its aspect ratio) is an error, as it is for timm's own transform."""
        sh, sw = self.scale_size
        if self.crop_mode == "squash":
            return sh, sw
        if self.crop_mode == "border":
            size = _keep_ratio(h, w, sh, sw, longest=1.0)
        elif sh == sw:  # torchvision Resize(int): shorter side to sh
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = sh, int(sh * long / short)
            size = (new_long, new_short) if w <= h else (new_short, new_long)
        else:
            size = _keep_ratio(h, w, sh, sw, longest=0.0)
        if min(size) < 1:
            raise SuperchargeError(
                f"a {h}x{w} image resizes to {size[0]}x{size[1]} ({self.crop_mode} mode, scale "
                f"{sh}x{sw}): too thin to resize, timm's transform fails on it too; crop it first"
            )
        return size

    def geometry(self, h: int, w: int) -> Geometry:
        """The full resize + (pad) + crop plan for an h x w image."""
        rh, rw = self.resized_size(h, w)
        th, tw = self.input_size
        pad = (0, 0, 0, 0)
        if tw > rw or th > rh:  # torchvision/timm pad before cropping
            pad = (
                (tw - rw) // 2 if tw > rw else 0,
                (th - rh) // 2 if th > rh else 0,
                (tw - rw + 1) // 2 if tw > rw else 0,
                (th - rh + 1) // 2 if th > rh else 0,
            )
        ph, pw = rh + pad[1] + pad[3], rw + pad[0] + pad[2]
        top = round((ph - th) / 2.0)  # round half to even, like torchvision
        left = round((pw - tw) / 2.0)
        return Geometry((rh, rw), pad, top, left, (th, tw))


def _keep_ratio(h: int, w: int, th: int, tw: int, longest: float) -> tuple[int, int]:
    ratio_h, ratio_w = h / th, w / tw
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h / ratio), round(w / ratio)
