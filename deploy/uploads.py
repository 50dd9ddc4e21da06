"""What the web page accepts from a browser, and in a few words why it refused a file.

A file is checked from its size and its image header alone, before any pixel is decoded: a
decompression bomb (a small file declaring a huge image), a format other than those every tool reads
(``data.images``) or an oversized upload is refused before it costs memory. Decoding itself (truncated
or corrupt data) fails later, in the predictor's loader, and is reported with
``data.images.image_failure``'s wording. Uploads are only ever read from the path the web framework
gave them; their own names are shown, never used as paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.images import MAX_PIXELS, image_failure, open_image

# Modes converted on the way to RGB, worth telling the user about.
CONVERTED_MODES = {"CMYK": "CMYK converted to RGB", "I;16": "16-bit greyscale scaled to 8 bits",
                   "I;16B": "16-bit greyscale scaled to 8 bits", "RGBA": "transparent pixels shown on white",
                   "LA": "transparent pixels shown on white"}
NAME_CHARS = 80  # longer upload names are shortened for display


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what one request may ask of the server, and on how long an upload is kept."""

    max_bytes: int = 20 * 2**20  # a full-size Kaggle photo is 2-5 MB
    max_pixels: int = MAX_PIXELS  # every tool's limit; the page may only lower it
    min_side: int = 32  # fewer pixels than this hold no leaf to classify
    max_files: int = 16  # photos per request
    max_age_s: int = 300  # an upload is removed this long after it arrived, predicted or not


class UploadError(ValueError):
    """A file the page refuses; the message says why in a few words."""


def check_upload(path: Path, limits: UploadLimits) -> str:
    """A short note on what will be converted ('' if nothing), or UploadError saying why ``path`` is refused."""
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        raise UploadError(f"no longer on the server (uploads are removed after {limits.max_age_s} s): "
                          "drop it again") from None
    if size == 0:
        raise UploadError("empty file")
    if size > limits.max_bytes:
        raise UploadError(f"{size / 2**20:.1f} MB is over the {limits.max_bytes / 2**20:.0f} MB limit")
    try:
        with open_image(path, limits.max_pixels) as image:
            (width, height), mode = image.size, image.mode
    except Exception as error:  # noqa: BLE001 - Pillow raises many types on bad headers
        raise UploadError(image_failure(error)) from None
    if min(width, height) < limits.min_side:
        raise UploadError(f"{width} x {height} pixels is too small to show a leaf "
                          f"(at least {limits.min_side} pixels a side)")
    return CONVERTED_MODES.get(mode, "")


def display_name(path: str | Path) -> str:
    """The upload's own file name, shortened, for the page and the CSV (escape it before putting it in HTML)."""
    name = Path(path).name or "upload"
    if len(name) > NAME_CHARS:
        name = name[: NAME_CHARS // 2 - 1] + "\u2026" + name[-(NAME_CHARS // 2):]
    return name
