"""A procedural photo of an apple leaf carrying the symptoms of its labels.

Why it exists: synthesize.py needs leaf photos whose visible symptoms follow the label truth, with
no internet for the real ones. Each image is a serrated ovate blade (midrib and side veins, petiole,
random pose and colour) over a blurred cluttered background, with lighting, blur and sensor noise,
and the symptoms of each of its labels drawn after how they look on real leaves. Geometry is in
units of the leaf length, so any size (up to full-size 4000x2672) works, and every draw comes from
the generator it is given: same generator state, same pixels.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from data.labels import parse_labels
from utils.files import atomic_write

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT

Color = np.ndarray  # float32 RGB in [0, 1]


# ----------------------------------------------------------------------------- drawing helpers


def _hsv(hue_deg: float, sat: float, val: float) -> Color:
    """An RGB colour from hue in degrees and saturation/value in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb(hue_deg / 360.0, sat, val), dtype=np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise in about [0, 1] (cubic overshoot is harmless) with ``cell``-pixel features."""
    h, w = shape
    cell = max(cell, 1.0)
    small = rng.random((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas blur a reduced copy so the cost does not grow with the image."""
    if sigma < 0.5:
        return mask
    if sigma <= 6:
        return cv2.GaussianBlur(mask, (0, 0), sigma)
    h, w = mask.shape[:2]
    factor = sigma / 3.0
    small = cv2.resize(mask, (max(1, int(w / factor)), max(1, int(h / factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), 3.0), (w, h), interpolation=cv2.INTER_LINEAR)


def _blend(img: np.ndarray, alpha: np.ndarray, color: Color | np.ndarray) -> None:
    """Paint ``color`` (one RGB or a per-pixel image) over ``img`` in place with opacity ``alpha``.

    Only the bounding box of the visible part is touched: lesions cover a small part of the frame.
    """
    visible = alpha > 1e-3
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = alpha[box][..., None]
    target = img[box]
    paint = color[box] if np.ndim(color) == 3 else color
    target += a * (paint - target)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates as cv2's fixed-point int32 (``_SHIFT`` fractional bits)."""
    return np.round(np.asarray(points) * _ONE).astype(np.int32)


def _blob(center: np.ndarray, radius: float, rng: np.random.Generator, roughness: float) -> np.ndarray:
    """Polygon of an irregular round blob: the radius wobbles by a few random harmonics."""
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0, roughness / np.sqrt(k)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * r.clip(0.3, None)
    return np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)


def _fill(mask: np.ndarray, polygon: np.ndarray, value: float) -> None:
    """Fill an anti-aliased polygon into a uint8 mask with opacity ``value`` in [0, 1]."""
    cv2.fillPoly(mask, [_fixed(polygon)], int(round(255 * value)), cv2.LINE_AA, _SHIFT)


def _disc(mask: np.ndarray, center: np.ndarray, radius: float, value: float) -> None:
    """Fill an anti-aliased disc into a uint8 mask with opacity ``value`` in [0, 1]."""
    c = tuple(int(v) for v in _fixed(center))
    cv2.circle(mask, c, max(1, int(round(radius * _ONE))), int(round(255 * value)), -1,
               cv2.LINE_AA, _SHIFT)


def _as_alpha(mask: np.ndarray) -> np.ndarray:
    """uint8 mask -> float32 opacity in [0, 1]."""
    return mask.astype(np.float32) * (1.0 / 255.0)


# ----------------------------------------------------------------------------- the leaf


@dataclass
class Leaf:
    """Pose and shape of the leaf; maps leaf coordinates to pixels.

    Leaf coordinates: ``u`` runs from the base (0) to the tip (1) along the midrib, ``v`` across
    as a fraction of the local half width (-1 and 1 are the edges). Lengths are in leaf lengths.
    """

    cx: float
    cy: float
    length: float  # pixels
    angle: float  # radians, direction base -> tip
    aspect: float  # greatest half width / length
    base_power: float  # roundness of the base
    tip_power: float  # sharpness of the tip

    def half_width(self, u: np.ndarray) -> np.ndarray:
        """Half width (leaf lengths) at ``u``: widest below the middle, an ovate blade."""
        a, b = self.base_power, self.tip_power
        peak = (a / (a + b)) ** a * (b / (a + b)) ** b
        u = np.clip(u, 0.0, 1.0)
        return self.aspect * u**a * (1 - u) ** b / peak

    def to_pixels(self, u: np.ndarray, across: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N x 2) of points at ``u`` and signed distance ``across`` (leaf lengths)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        x = (np.asarray(u) - 0.5) * self.length
        y = np.asarray(across) * self.length
        return np.stack([self.cx + x * c - y * s, self.cy + x * s + y * c], axis=-1)

    def point(self, u: float | np.ndarray, v: float | np.ndarray) -> np.ndarray:
        """Pixel coordinates of leaf coordinates ``(u, v)``."""
        return self.to_pixels(u, np.asarray(v) * self.half_width(np.asarray(u)))

    def across_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Per-pixel signed distance from the midrib line (leaf lengths), for shading."""
        h, w = shape
        c, s = np.cos(self.angle) / self.length, np.sin(self.angle) / self.length
        dy = ((np.arange(h) - self.cy) * c).astype(np.float32)
        dx = ((np.arange(w) - self.cx) * s).astype(np.float32)
        return np.subtract.outer(dy, dx)


def _sample_leaf(rng: np.random.Generator, shape: tuple[int, int], curled: bool) -> Leaf:
    """A random pose, size and shape that keeps most of the leaf in the frame."""
    h, w = shape
    short = min(h, w)
    return Leaf(
        cx=w * rng.uniform(0.42, 0.58),
        cy=h * rng.uniform(0.42, 0.58),
        length=short * rng.uniform(0.95, 1.25),
        angle=rng.uniform(0, 2 * np.pi),
        aspect=rng.uniform(0.26, 0.38) * (0.85 if curled else 1.0),
        base_power=rng.uniform(0.45, 0.7),
        tip_power=rng.uniform(0.8, 1.15),
    )


def _leaf_outline(leaf: Leaf, rng: np.random.Generator, curled: bool) -> np.ndarray:
    """Polygon of the blade: serrated edge, teeth pointing to the tip; wavy when ``curled``."""
    u = np.linspace(0.0, 1.0, 600)
    taper = np.clip(4 * u * (1 - u), 0, 1)
    sides = []
    for sign in (1.0, -1.0):
        teeth = rng.uniform(0.006, 0.011) * ((u * rng.uniform(28, 40) + rng.random()) % 1.0)
        edge = leaf.half_width(u) + teeth * taper
        # Drawn even when flat, so that a flat and a curled leaf of one seed share all else.
        waves = rng.uniform(0.025, 0.05) * np.sin(2 * np.pi * rng.uniform(3, 6) * u + rng.uniform(0, 6.3))
        if curled:
            edge = edge * (1 + waves / leaf.aspect * taper)
        sides.append(leaf.to_pixels(u, sign * edge))
    return np.concatenate([sides[0], sides[1][::-1]])


def _draw_petiole(img: np.ndarray, leaf: Leaf, rng: np.random.Generator) -> None:
    """A slightly bent stalk leaving the base away from the tip."""
    t = np.linspace(0, 1, 12)
    stalk = rng.uniform(0.12, 0.28)
    bend = rng.uniform(-0.08, 0.08)
    points = leaf.to_pixels(-stalk * t, bend * t**2)
    mask = np.zeros(img.shape[:2], np.uint8)
    width = max(1, int(round(leaf.length * rng.uniform(0.01, 0.016))))
    cv2.polylines(mask, [_fixed(points)], False, 255, width, cv2.LINE_AA, _SHIFT)
    _blend(img, _as_alpha(mask), _hsv(rng.uniform(40, 80), rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)))


def _vein_mask(leaf: Leaf, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Opacity of the midrib and the pinnate side veins curving toward the tip."""
    mask = np.zeros(shape, np.uint8)
    midrib = leaf.point(np.linspace(0, 0.97, 20), np.zeros(20))
    cv2.polylines(mask, [_fixed(midrib)], False, 255, max(1, int(round(leaf.length * 0.008))),
                  cv2.LINE_AA, _SHIFT)
    pairs = int(rng.integers(6, 10))
    side_width = max(1, int(round(leaf.length * 0.0035)))
    t = np.linspace(0, 1, 10)
    for u0 in np.linspace(0.08, 0.82, pairs) + rng.uniform(-0.02, 0.02, pairs):
        for sign in (1.0, -1.0):
            reach = rng.uniform(0.12, 0.2)
            vein = leaf.point(u0 + reach * t**1.4, sign * 0.88 * t)
            cv2.polylines(mask, [_fixed(vein)], False, 190, side_width, cv2.LINE_AA, _SHIFT)
    return _soft(_as_alpha(mask), leaf.length * 0.0015)


def _leaf_surface(leaf: Leaf, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The blade's colour over the whole frame: green with mottling, a fold shading and veins."""
    base = _hsv(rng.uniform(78, 112), rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.68))
    img = np.empty((*shape, 3), np.float32)
    img[:] = base
    fold = 1 + rng.uniform(-0.14, 0.14) * np.clip(leaf.across_grid(shape) * 40, -1, 1)
    mottle = 1 + 0.16 * (_noise(rng, shape, leaf.length * 0.08) - 0.5) \
        + 0.08 * (_noise(rng, shape, leaf.length * 0.012) - 0.5)
    img *= (fold * mottle)[..., None]
    vein_color = np.clip(base * rng.uniform(1.15, 1.4) + np.float32([0.06, 0.07, 0.0]), 0, 1)
    _blend(img, _vein_mask(leaf, shape, rng) * rng.uniform(0.35, 0.7), vein_color)
    return img


# ----------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Out-of-focus clutter: a gradient plus blobs of foliage, shadow, soil and sky colours.

    Drawn on a small canvas and enlarged, which is both the defocus blur and what keeps the
    cost independent of the output size.
    """
    h, w = shape
    scale = 160 / max(h, w)
    sw, sh = max(8, int(round(w * scale))), max(8, int(round(h * scale)))
    top, bottom = _background_color(rng), _background_color(rng)
    ramp = np.linspace(0, 1, sh, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (sh, sw, 3)).copy()
    for _ in range(int(rng.integers(25, 60))):
        center = (int(rng.integers(0, sw)), int(rng.integers(0, sh)))
        axes = (int(rng.integers(3, 30)), int(rng.integers(2, 14)))
        cv2.ellipse(canvas, center, axes, rng.uniform(0, 180), 0, 360,
                    _background_color(rng).tolist(), -1, cv2.LINE_AA)
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(1.5, 4.0))
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _background_color(rng: np.random.Generator) -> Color:
    """Mostly foliage greens and shadows, sometimes soil or bark, rarely pale sky."""
    kind = rng.choice(4, p=[0.62, 0.2, 0.14, 0.04])
    if kind == 0:
        return _hsv(rng.uniform(65, 130), rng.uniform(0.3, 0.75), rng.uniform(0.25, 0.75))
    if kind == 1:
        return _hsv(rng.uniform(70, 150), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.22))
    if kind == 2:
        return _hsv(rng.uniform(20, 45), rng.uniform(0.15, 0.4), rng.uniform(0.25, 0.55))
    return _hsv(rng.uniform(190, 215), rng.uniform(0.05, 0.25), rng.uniform(0.8, 0.97))


# ----------------------------------------------------------------------------- symptoms


def _lesion_sites(leaf: Leaf, rng: np.random.Generator, count: int,
                  v_range: tuple[float, float] = (0.0, 0.85)) -> np.ndarray:
    """Pixel centres of ``count`` lesions scattered over the blade."""
    u = rng.uniform(0.1, 0.9, count)
    v = rng.uniform(*v_range, count) * rng.choice([-1.0, 1.0], count)
    return leaf.point(u, v)


def _paint_scab(img: np.ndarray, leaf: Leaf, rng: np.random.Generator) -> None:
    """Olive-to-black velvety blotches with feathery, ragged edges."""
    mask = np.zeros(img.shape[:2], np.uint8)
    for center in _lesion_sites(leaf, rng, int(rng.integers(5, 13))):
        radius = leaf.length * rng.uniform(0.035, 0.07)
        _fill(mask, _blob(center, radius, rng, 0.45), rng.uniform(0.7, 1.0))
    alpha = _soft(_as_alpha(mask), leaf.length * 0.008)
    velvet = _noise(rng, img.shape[:2], leaf.length * 0.006)
    alpha = np.clip(alpha * (0.55 + 0.9 * velvet), 0, 1)
    olive, black = np.float32([0.4, 0.36, 0.13]), np.float32([0.12, 0.11, 0.06])
    _blend(img, alpha, olive + rng.uniform(0.0, 0.7) * (black - olive))


def _paint_rust(img: np.ndarray, leaf: Leaf, rng: np.random.Generator) -> None:
    """Bright orange round spots, each in a diffuse yellow halo, sometimes with dark pinpoints."""
    shape = img.shape[:2]
    halo, core, dots = (np.zeros(shape, np.uint8) for _ in range(3))
    for center in _lesion_sites(leaf, rng, int(rng.integers(5, 15))):
        radius = leaf.length * rng.uniform(0.022, 0.04)
        _disc(halo, center, radius * rng.uniform(1.6, 2.1), rng.uniform(0.45, 0.8))
        _disc(core, center, radius, rng.uniform(0.75, 1.0))
        if rng.random() < 0.5:
            _disc(dots, center, radius * 0.3, 0.7)
    yellow = _hsv(rng.uniform(48, 58), rng.uniform(0.6, 0.8), 0.85)
    _blend(img, _soft(_as_alpha(halo), leaf.length * 0.01), yellow)
    _blend(img, _soft(_as_alpha(core), leaf.length * 0.002),
           _hsv(rng.uniform(18, 32), rng.uniform(0.8, 0.95), rng.uniform(0.82, 0.95)))
    _blend(img, _soft(_as_alpha(dots), leaf.length * 0.003), np.float32([0.45, 0.2, 0.08]))


def _paint_frog_eye(img: np.ndarray, leaf: Leaf, rng: np.random.Generator) -> None:
    """Round spots: a tan to light-brown centre inside a dark purple margin."""
    shape = img.shape[:2]
    margin, centre = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for center in _lesion_sites(leaf, rng, int(rng.integers(4, 11))):
        radius = leaf.length * rng.uniform(0.025, 0.05)
        _fill(margin, _blob(center, radius, rng, 0.12), rng.uniform(0.75, 1.0))
        _fill(centre, _blob(center, radius * rng.uniform(0.55, 0.72), rng, 0.1), rng.uniform(0.8, 1.0))
    soft = leaf.length * 0.002
    purple = _hsv(rng.uniform(315, 345), rng.uniform(0.45, 0.65), rng.uniform(0.25, 0.38))
    tan = _hsv(rng.uniform(28, 38), rng.uniform(0.45, 0.6), rng.uniform(0.58, 0.75))
    _blend(img, _soft(_as_alpha(margin), soft), purple)
    _blend(img, _soft(_as_alpha(centre), soft), tan)


def _paint_powdery_mildew(img: np.ndarray, leaf: Leaf, rng: np.random.Generator) -> None:
    """A greyish cast and whitish, powdery, diffuse patches."""
    shape = img.shape[:2]
    grey = img.mean(axis=2, keepdims=True)
    img += rng.uniform(0.2, 0.5) * (grey - img)
    mask = np.zeros(shape, np.uint8)
    for center in _lesion_sites(leaf, rng, int(rng.integers(2, 6)), (0.0, 0.7)):
        _fill(mask, _blob(center, leaf.length * rng.uniform(0.12, 0.25), rng, 0.4), rng.uniform(0.7, 1.0))
    powder = _noise(rng, shape, leaf.length * 0.008)
    alpha = _soft(_as_alpha(mask), leaf.length * 0.04) * (0.5 + 0.7 * powder)
    _blend(img, np.clip(alpha * rng.uniform(0.55, 0.9), 0, 1), np.float32([0.88, 0.9, 0.86]))


def _shade_curled_edge(img: np.ndarray, leaf: Leaf, rng: np.random.Generator, leaf_alpha: np.ndarray) -> None:
    """A pale band along the edge, where a curled blade shows its underside."""
    inside = cv2.distanceTransform((leaf_alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    band = np.exp(-inside / (leaf.length * rng.uniform(0.02, 0.04)))
    _blend(img, band * rng.uniform(0.3, 0.5), np.float32([0.72, 0.78, 0.68]))


def _paint_complex(img: np.ndarray, leaf: Leaf, rng: np.random.Generator) -> None:
    """Large irregular brown necrosis (often from the margin) in chlorotic yellowing, plus mixed spots."""
    shape = img.shape[:2]
    rim, core, yellow, spots = (np.zeros(shape, np.uint8) for _ in range(4))
    for center in _lesion_sites(leaf, rng, int(rng.integers(1, 4)), (0.5, 1.0)):
        radius = leaf.length * rng.uniform(0.08, 0.16)
        outline = _blob(center, radius, rng, 0.5)
        _fill(yellow, _blob(center, radius * 1.6, rng, 0.3), rng.uniform(0.4, 0.7))
        _fill(rim, outline, 1.0)
        _fill(core, center + (outline - center) * 0.8, rng.uniform(0.7, 1.0))
    for center in _lesion_sites(leaf, rng, int(rng.integers(2, 6))):
        _disc(spots, center, leaf.length * rng.uniform(0.01, 0.02), rng.uniform(0.6, 0.9))
    mottle = 0.75 + 0.5 * _noise(rng, shape, leaf.length * 0.02)
    _blend(img, _soft(_as_alpha(yellow), leaf.length * 0.04), _hsv(rng.uniform(50, 60), 0.65, 0.8))
    _blend(img, _soft(_as_alpha(rim), leaf.length * 0.003), np.float32([0.22, 0.13, 0.07]))
    _blend(img, _soft(_as_alpha(core), leaf.length * 0.006),
           np.clip(_hsv(rng.uniform(22, 32), 0.6, rng.uniform(0.4, 0.55)) * mottle[..., None], 0, 1))
    _blend(img, _soft(_as_alpha(spots), leaf.length * 0.003), np.float32([0.3, 0.2, 0.13]))


def _paint_blemish(img: np.ndarray, leaf: Leaf, rng: np.random.Generator) -> None:
    """An innocuous faint speck any leaf may carry, so that "a spot" alone does not mean disease."""
    mask = np.zeros(img.shape[:2], np.uint8)
    for center in _lesion_sites(leaf, rng, int(rng.integers(1, 3))):
        _disc(mask, center, leaf.length * rng.uniform(0.006, 0.012), rng.uniform(0.2, 0.4))
    _blend(img, _soft(_as_alpha(mask), leaf.length * 0.003), _hsv(rng.uniform(40, 70), 0.4, 0.4))


Painter = Callable[[np.ndarray, Leaf, np.random.Generator], None]
# Painting order: the cast of mildew first, the large necrosis next, small spots on top.
_PAINTERS: dict[str, Painter] = {
    "powdery_mildew": _paint_powdery_mildew,
    "complex": _paint_complex,
    "scab": _paint_scab,
    "frog_eye_leaf_spot": _paint_frog_eye,
    "rust": _paint_rust,
}


# ----------------------------------------------------------------------------- the photo


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven light, white balance, a slight defocus and sensor noise; returns uint8 RGB."""
    h, w = img.shape[:2]
    theta = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0.05, 0.25)
    ramp = np.add.outer(np.sin(theta) * slope * np.linspace(-1, 1, h, dtype=np.float32),
                        np.cos(theta) * slope * np.linspace(-1, 1, w, dtype=np.float32))
    ramp += np.float32(1.0)
    img *= ramp[..., None]
    img *= (rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)).astype(np.float32)
    img = _soft(img, rng.uniform(0.3, 1.0) * min(h, w) / 400)
    grain = rng.random(img.shape, dtype=np.float32)  # uniform: looks like Gaussian grain, 5x cheaper
    grain -= np.float32(0.5)
    grain *= np.float32(255 * rng.uniform(0.03, 0.08))
    img *= np.float32(255)
    img += grain
    img += np.float32(0.5)  # round, not truncate, in astype below
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def render_leaf(labels: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """One photo (uint8 H x W x 3 RGB) of a leaf carrying the symptoms of ``labels``.

    The scene, the symptoms and the camera draw from three separate streams of ``rng``: one
    generator state gives the same leaf, background and noise whatever the labels, so a diseased
    photo differs from its healthy twin by the symptoms alone (and by the curl of a mildewed leaf).
    """
    names = parse_labels(labels)
    shape = (size[1], size[0])
    scene, symptoms, camera = rng.spawn(3)
    curled = "powdery_mildew" in names
    leaf = _sample_leaf(scene, shape, curled)
    img = _background(scene, shape)
    _draw_petiole(img, leaf, scene)
    leaf_mask = np.zeros(shape, np.uint8)
    _fill(leaf_mask, _leaf_outline(leaf, scene, curled), 1.0)
    leaf_alpha = _as_alpha(leaf_mask)
    surface = _leaf_surface(leaf, shape, scene)
    if symptoms.random() < 0.3:
        _paint_blemish(surface, leaf, symptoms)
    if curled:
        _shade_curled_edge(surface, leaf, symptoms, leaf_alpha)
    for name, paint in _PAINTERS.items():
        if name in names:
            paint(surface, leaf, symptoms)
    _blend(img, leaf_alpha, surface)
    return _camera(img, camera)


EXAMPLE_LABELS = ("scab", "rust", "healthy", "frog_eye_leaf_spot complex")


def write_example_leaves(folder: Path, seed: int = 0) -> list[Path]:
    """A few synthetic leaves named after their true labels: the web page's examples for a first click."""
    paths = []
    for index, labels in enumerate(EXAMPLE_LABELS):
        pixels = render_leaf(labels, np.random.default_rng([seed, index]), (600, 400))
        paths.append(folder / f"{labels.replace(' ', '+')}.jpg")
        atomic_write(paths[-1], lambda f, pixels=pixels: Image.fromarray(pixels).save(f, format="JPEG", quality=92))
    return paths
