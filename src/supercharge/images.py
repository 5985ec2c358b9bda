"""Reading input images: one-line errors that name the file, and RGB conversion as timm does it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from supercharge.errors import ImageReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The photo every benchmark batch repeats unless --image names another (fixtures/images); runs
# saved before the photo was recorded timed it.
DEFAULT_BENCHMARK_IMAGE = {"name": "coffee.png", "width": 600, "height": 400}


def image_files(folder: str | Path, what: str) -> list[Path]:
    """The images directly in `folder` (by suffix), sorted; `what` names the folder's role in
    the one-line error when it is missing or holds none."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImageReadError(f"{what} folder {folder} is a file: give a folder of photos")
    if not folder.is_dir():
        raise ImageReadError(f"{what} folder {folder} does not exist: give a folder of photos")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ImageReadError(
            f"no {what} images in {folder}: give at least one photo ({', '.join(IMAGE_SUFFIXES)})"
        )
    return paths


def readable_image_files(folder: str | Path, what: str) -> list[Path]:
    """image_files, each decoded once: a bad photo fails before any work, not mid-build."""
    paths = image_files(folder, what)
    for path in paths:
        load_image(path)
    return paths


def load_image(path: str | Path) -> Image.Image:
    """Decode `path` fully (so truncation is caught here, not mid-benchmark) and return RGB.

    timm's eval pipeline is fed `Image.open(p).convert('RGB')`; we do the same so every
    preprocessing path sees identical pixels.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image {p} does not exist: check the path")
    if p.is_dir():
        raise ImageReadError(f"image {p} is a directory: give an image file")
    if p.stat().st_size == 0:
        raise ImageReadError(f"image {p} is empty (0 bytes): give a PNG/JPEG/... image file")
    try:
        with warnings.catch_warnings():  # PIL's EXIF/size warnings: the error below says enough
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                im.load()
                _check_levels(p, im)
                return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"image {p} is too large to decode safely ({str(exc).split(', could')[0]}): "
            "downscale it first"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            f"image {p} is not an image PIL can read: give a PNG/JPEG file"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(
            f"image {p} is truncated or corrupt ({reason}): re-export or replace the file"
        ) from exc


# Single-channel modes with more than 8 bits a level: convert("RGB") clips them to 0..255.
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _check_levels(p: Path, im: Image.Image) -> None:
    """Refuse a 16-bit (or 32-bit) greyscale image whose levels convert("RGB") would clip.

    PIL's convert("RGB"), which timm's loader uses, clips such levels to 0..255 instead of
    scaling them, so a 16-bit greyscale photo turns into a nearly white image (a float one
    scaled 0..1 into a black one) and gets a confident wrong answer, silently. Levels within
    0..255 convert exactly and are accepted.
    """
    if im.mode not in _WIDE_GREY:
        return
    levels = np.asarray(im)  # getextrema() refuses some of these modes (I;16B)
    low, high = (float(levels.min()), float(levels.max())) if levels.size else (0.0, 0.0)
    scaled_to_one = im.mode == "F" and 0 < high <= 1
    if high > 255 or low < 0 or scaled_to_one:
        raise ImageReadError(
            f"image {p} is greyscale with levels {low:g}..{high:g} (PIL mode {im.mode}): "
            "PIL's convert('RGB'), as timm's loader uses it, reads them as 0..255 levels and "
            "clips the rest; save it as an 8-bit image first"
        )


def image_identity(path: Path, image: Image.Image) -> dict[str, Any]:
    """What a benchmark was fed: its size sets what preprocessing costs, so two runs' timings
    compare only when their photos do (the gate checks the sha256)."""
    from supercharge.cache import sha256_file

    return {
        "name": Path(path).name,
        "width": image.width,
        "height": image.height,
        "sha256": sha256_file(Path(path)),
    }


def describe_identity(identity: dict[str, Any]) -> str:
    """`coffee.png (600x400, sha256 1a2b3c4d)`: width x height, as image tools print it."""
    return (
        f"{identity.get('name')} ({identity.get('width')}x{identity.get('height')}, "
        f"sha256 {str(identity.get('sha256'))[:8]})"
    )
