"""Scenes of the shapes world: one or two coloured shapes on a plain background, as plain data.

A :class:`Scene` holds everything the renderer needs (exact centre and radius in pixels) plus the symbolic attributes
(colour, shape, size name, position name) that captions and the checker talk about. Sampling takes an explicit
``numpy.random.Generator`` so every scene is reproducible from one seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 70, 225),
    "purple": (150, 50, 200),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (120, 120, 120), "white": (250, 250, 250)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "big")
# Positions of a lone object; a pair of objects always stands side by side ("left" and "right").
POSITIONS: tuple[str, ...] = ("center", "left", "right", "top", "bottom")

# Centres (x, y) in pixels and radii per size: a lone object has the whole canvas, a pair shares it.
_SINGLE_CENTRES = {"center": (16.0, 16.0), "left": (9.5, 16.0), "right": (22.5, 16.0), "top": (16.0, 9.5),
                   "bottom": (16.0, 22.5)}
_PAIR_CENTRES = {"left": (8.5, 16.0), "right": (23.5, 16.0)}
_SINGLE_RADIUS = {"small": 4.5, "big": 8.5}
_PAIR_RADIUS = {"small": 3.5, "big": 6.5}
_JITTER_PX = 1.0  # small random offsets so models see more than one exact pixel layout per scene
_RADIUS_JITTER = 0.08


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    size: str
    position: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    """One or two objects (a pair is ordered left to right) on a background colour."""

    objects: tuple[WorldObject, ...]
    background: str = "black"

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a scene has one or two objects, got {len(self.objects)}")
        for o in self.objects:
            if o.colour not in COLOURS or o.shape not in SHAPES or o.size not in SIZES:
                raise ValueError(f"unknown attribute in {o}")
            if o.colour == self.background:
                raise ValueError(f"a {o.colour} object on a {self.background} background would be invisible")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}")


def make_object(colour: str, shape: str, size: str, position: str, pair: bool, rng: np.random.Generator | None = None
                ) -> WorldObject:
    """Place an object at the nominal centre of ``position`` (jittered when ``rng`` is given)."""
    cx, cy = (_PAIR_CENTRES if pair else _SINGLE_CENTRES)[position]
    r = (_PAIR_RADIUS if pair else _SINGLE_RADIUS)[size]
    if rng is not None:
        cx += float(rng.uniform(-_JITTER_PX, _JITTER_PX))
        cy += float(rng.uniform(-_JITTER_PX, _JITTER_PX))
        r *= 1.0 + float(rng.uniform(-_RADIUS_JITTER, _RADIUS_JITTER))
    return WorldObject(colour, shape, size, position, cx, cy, r)


def object_colours(background: str) -> list[str]:
    return [c for c in COLOURS if c != background]


def sample_scene(
    rng: np.random.Generator,
    *,
    excluded_pairs: frozenset[tuple[str, str]] = frozenset(),
    p_pair: float = 0.4,
    p_identical: float = 0.25,
    p_background: float = 0.25,
) -> Scene:
    """Draw a random scene.

    Args:
        excluded_pairs: (colour, shape) combinations never drawn (the generator's held-out compositions).
        p_pair: probability of two objects; ``p_identical`` of those are two copies of one object ("two red
            circles"). ``p_background``: probability of a non-black background.
    """
    background = "black"
    if rng.random() < p_background:
        background = str(rng.choice(["gray", "white"]))
    colours = object_colours(background)

    def draw_cs() -> tuple[str, str]:
        while True:
            c, s = str(rng.choice(colours)), str(rng.choice(SHAPES))
            if (c, s) not in excluded_pairs:
                return c, s

    if rng.random() >= p_pair:
        c, s = draw_cs()
        obj = make_object(c, s, str(rng.choice(SIZES)), str(rng.choice(POSITIONS)), False, rng)
        return Scene((obj,), background)
    if rng.random() < p_identical:
        c, s = draw_cs()
        size = str(rng.choice(SIZES))
        objs = (make_object(c, s, size, "left", True, rng), make_object(c, s, size, "right", True, rng))
        return Scene(objs, background)
    while True:
        (c1, s1), (c2, s2) = draw_cs(), draw_cs()
        if (c1, s1) != (c2, s2):
            break
    objs = (make_object(c1, s1, str(rng.choice(SIZES)), "left", True, rng),
            make_object(c2, s2, str(rng.choice(SIZES)), "right", True, rng))
    return Scene(objs, background)
