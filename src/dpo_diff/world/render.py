"""Deterministic procedural renderer: a :class:`~dpo_diff.world.scene.Scene` to a 32x32 RGB uint8 array.

Shapes are drawn with PIL at 4x resolution and box-filtered down, so edges are anti-aliased the same way on every
platform; no randomness happens here (all jitter is already in the scene).

``rounding`` (a share of each object's radius) rounds its convex corners by a morphological opening of its own
mask (erode, then dilate, by a disc of that share of its radius): squares with rounded corners, triangles and
diamonds with blunt tips, as the generator draws them; relative to the object, so a small diamond stays as much a
diamond as a big one. It is a training augmentation for judges (``scripts/train_world.py --judge-rounding``); 0, the
default, is the plain scene.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from dpo_diff.world.scene import BACKGROUNDS, COLOURS, IMAGE_SIZE, Scene, WorldObject

_SS = 4  # supersampling factor


def _polygon(o: WorldObject) -> list[tuple[float, float]] | None:
    cx, cy, r = o.x * _SS, o.y * _SS, o.radius * _SS
    if o.shape == "square":
        h = r * 0.86  # equal-ish area to the circle keeps "size" about extent, not shape
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if o.shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if o.shape == "triangle":
        # Point up, centroid at the centre; circumradius slightly above r so it does not look smaller.
        R = r * 1.15
        return [(cx + R * math.cos(a), cy + R * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    return None


def _draw(draw: ImageDraw.ImageDraw, o: WorldObject, fill) -> None:
    """Fill the object's shape at the supersampled resolution."""
    poly = _polygon(o)
    if poly is None:
        cx, cy, r = o.x * _SS, o.y * _SS, o.radius * _SS
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def _mask(o: WorldObject, size: int) -> np.ndarray:
    """The object's filled shape at the supersampled resolution, as a boolean array."""
    mask = Image.new("1", (size, size), 0)
    _draw(ImageDraw.Draw(mask), o, 1)
    return np.asarray(mask, dtype=bool)


def _opened(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological opening by a disc of ``radius`` (supersampled pixels), through distance transforms: the points
    farther than ``radius`` inside, grown back by ``radius``. Convex corners come out as arcs of that radius."""
    from scipy.ndimage import distance_transform_edt

    core = distance_transform_edt(mask) > radius
    if not core.any():
        return mask  # too small to round: keep the shape rather than erase the object
    return distance_transform_edt(~core) <= radius


def render(scene: Scene, rounding: float = 0.0) -> np.ndarray:
    """Render ``scene`` to a ``(32, 32, 3)`` uint8 array; ``rounding``: corner radius as a share of each object's
    radius (module docstring)."""
    size = IMAGE_SIZE * _SS
    if rounding <= 0:
        img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
        draw = ImageDraw.Draw(img)
        for o in scene.objects:
            _draw(draw, o, COLOURS[o.colour])
        return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.uint8).copy()
    big = np.empty((size, size, 3), dtype=np.float64)
    big[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:
        big[_opened(_mask(o, size), rounding * o.radius * _SS)] = COLOURS[o.colour]
    small = big.reshape(IMAGE_SIZE, _SS, IMAGE_SIZE, _SS, 3).mean((1, 3))  # the box filter of the plain path
    return np.rint(small).astype(np.uint8)


def render_batch(scenes: list[Scene], rounding: list[float] | None = None) -> np.ndarray:
    """``(N, 32, 32, 3)`` uint8; ``rounding``: one corner share per scene (none: plain scenes)."""
    return np.stack([render(s, r) for s, r in zip(scenes, rounding or [0.0] * len(scenes))])
