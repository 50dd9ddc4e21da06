"""Pictures as PNG bytes (so every figure is written atomically like any other file), and the one contact sheet."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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


@dataclass
class Tile:
    """One picture of a sheet (a file, a PIL image or an RGB array; None leaves the place blank) and its title."""

    picture: Path | Any | None
    title: str = ""
    colour: str = "black"


def tile_sheet(rows: Sequence[Sequence[Tile]], title: str = "", row_titles: Sequence[tuple[str, str]] = (),
               side: int = 256, inches: float = 2.6, fontsize: float = 6, dpi: int = 100) -> bytes:
    """A sheet of pictures as PNG: ``rows`` of tiles (each downscaled to ``side`` pixels), an optional
    ``(title, colour)`` above each row and a ``title`` over the whole. The one contact sheet of the project:
    duplicates, label issues, Grad-CAM grids."""
    from matplotlib.figure import Figure

    rows = [list(row) for row in rows] or [[]]
    columns = max(1, max(len(row) for row in rows))
    figure = Figure(figsize=(inches * columns, inches * len(rows)), layout="constrained")
    subfigures = figure.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for index, (subfigure, row) in enumerate(zip(subfigures, rows)):
        if index < len(row_titles):
            text, colour = row_titles[index]
            subfigure.suptitle(text, color=colour, fontsize=fontsize + 3, fontweight="bold")
        for axes, tile in zip(subfigure.subplots(1, columns, squeeze=False)[0], [*row, *[None] * columns]):
            axes.set_axis_off()
            if tile is None:
                continue
            if tile.picture is not None:
                axes.imshow(thumbnail(tile.picture, side))
            axes.set_title(tile.title, fontsize=fontsize, color=tile.colour)
    if title:
        figure.suptitle(title, fontsize=fontsize + 3)
    return png_bytes(figure, dpi=dpi)


def thumbnail(picture: Path | Any, side: int) -> Any:
    """An RGB PIL copy of ``picture`` (a file, a PIL image or an RGB array) no larger than ``side`` x ``side``."""
    from PIL import Image

    if isinstance(picture, (str, Path)):
        with Image.open(picture) as image:
            image = image.convert("RGB")
    else:
        image = picture.convert("RGB") if isinstance(picture, Image.Image) else Image.fromarray(picture)
    image.thumbnail((side, side))
    return image


def in_rows(tiles: Sequence[Tile], columns: int) -> list[list[Tile]]:
    """``tiles`` cut into rows of ``columns``."""
    return [list(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
