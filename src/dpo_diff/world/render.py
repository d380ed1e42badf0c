"""Deterministic procedural renderer: a :class:`~dpo_diff.world.scene.Scene` to a 32x32 RGB uint8 array.

Shapes are drawn with PIL at 4x resolution and box-filtered down, so edges are anti-aliased the same way on every
platform; no randomness happens here (all jitter is already in the scene).
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


def render(scene: Scene) -> np.ndarray:
    """Render ``scene`` to a ``(32, 32, 3)`` uint8 array."""
    size = IMAGE_SIZE * _SS
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        fill = COLOURS[o.colour]
        poly = _polygon(o)
        if poly is None:
            cx, cy, r = o.x * _SS, o.y * _SS, o.radius * _SS
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(poly, fill=fill)
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.uint8).copy()


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """``(N, 32, 32, 3)`` uint8."""
    return np.stack([render(s) for s in scenes])
