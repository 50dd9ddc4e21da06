"""Decoding photos as the model expects them (upright, RGB, transparency on white), and why one failed.

The one home of what every tool that reads photos accepts (prepare, test.py, visual.py, the web page): the
formats leaf photos come in, and a pixel limit read from the header before any pixel is decoded. Any
other format is never handed to Pillow (whose EPS reader would run Ghostscript), and an image declaring
more pixels is refused before it costs memory (a decompression bomb: a few kB declaring gigapixels).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

# 16 MP phones, 50 MP sensors and Kaggle's 10.7 MP photos pass; decoded, 64 MP is about 200 MB of RGB.
MAX_PIXELS = 64_000_000
# What cameras, phones and browsers produce (Pillow's JPEG reader also opens phones' MPO files).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP or TIFF"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})  # what folders are searched for


class ImageTooLarge(Image.DecompressionBombError):
    """An image whose header declares more pixels than the limit (reported as Pillow's own bomb error is)."""


@contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """The image of ``path`` opened (header read, nothing decoded) when its format and size are accepted.

    Raises Image.UnidentifiedImageError for any other format, ImageTooLarge over ``max_pixels``.
    """
    Image.init()  # with explicit formats, Image.open only knows the plugins registered so far
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it in one line
        image = Image.open(path, formats=IMAGE_FORMATS)
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width} x {height} pixels, more than {max_pixels / 1e6:g} megapixels "
                                "(a decompression bomb?)")
        yield image


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


def load_image(path: str | Path, min_size: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Upright (EXIF orientation applied) RGB image; transparency is composited on white.

    Only the accepted formats, up to ``max_pixels`` (see ``open_image``). ``min_size`` lets the JPEG
    decoder downscale by a power of two while decoding, never below ``min_size`` on either side: a
    large photo then costs a fraction of a full decode.
    """
    with open_image(path, max_pixels) as image:
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
        return f"not an image of an accepted format: {FORMAT_NAMES}"
    lines = str(error).strip().splitlines()
    return f"cannot decode: {type(error).__name__}" + (f": {lines[0]}" if lines else "")
