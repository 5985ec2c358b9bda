"""Reading input images: one-line errors that name the file, and RGB conversion as timm does it."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from supercharge.errors import ImageReadError


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
