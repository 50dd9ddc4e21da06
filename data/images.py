"""Decoding photos as the model expects them (upright, RGB, transparency on white), and why one failed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent pixels (RGBA, LA, P with transparency) composited on white.

    16-bit greyscale (PNG, TIFF) keeps its top 8 bits: Pillow's own conversion clips every value
    above 255, which turns such a photo white.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Upright (EXIF orientation applied) RGB image; transparency is composited on white.

    ``min_size`` lets the JPEG decoder downscale by a power of two while decoding, never below
    ``min_size`` on either side: a large photo then costs a fraction of a full decode.
    """
    with Image.open(path) as image:
        if min_size:
            image.draft("RGB", (min_size, min_size))
        return to_rgb(ImageOps.exif_transpose(image))


def image_failure(error: Exception) -> str:
    """Why an image could not be decoded, in a few words: one wording for every script's skip report."""
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"over the pixel limit: {error}"
    if "truncated" in str(error):
        return "truncated image"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    lines = str(error).strip().splitlines()
    return f"cannot decode: {type(error).__name__}" + (f": {lines[0]}" if lines else "")
