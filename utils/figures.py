"""PNG bytes of a picture, so that every figure and contact sheet is written atomically like any other file."""
from __future__ import annotations

import io
from typing import Any

import numpy as np


def png_bytes(picture: Any, dpi: int = 100) -> bytes:
    """A matplotlib Figure, a PIL image or an RGB uint8 array, encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    if isinstance(picture, Image.Image):
        picture.save(buffer, format="PNG")
    else:
        picture.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
