"""Caption negatives for training the world's VQA judge: captions that are *false* of a scene in one precise way.

Kinds (the failures VQA-style faithfulness scores are built to see and a bag-of-words judge misses):

* ``attribute``: one attribute changed (colour, shape, size, position or background; for a pair, the left/right
  order swapped);
* ``binding``: two objects' colours, shapes or sizes exchanged ("a red circle and a blue square" -> "a blue circle and
  a red square"): the same words, bound wrongly;
* ``relation``: the pair's left/right relation flipped;
* ``other``: the caption of an unrelated scene (an easy negative).

Every negative is verified against the scene's *true* attributes with the checker's comparison rule
(:func:`~dpo_diff.world.checker.score_reading` on :func:`true_reading`), so a caption that leaves the changed
attribute unmentioned (still true of the scene) is never used as a negative. The checker's *network* is not involved:
the judge never learns from the checker's readings of any image. Held-out captions are never produced.
"""

from __future__ import annotations

import numpy as np

from dpo_diff.world.captions import caption, parse_caption
from dpo_diff.world.checker import ObjectReading, SceneReading, score_reading
from dpo_diff.world.prompts import is_heldout_caption
from dpo_diff.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, make_object, sample_scene

NEGATIVE_KINDS = ("attribute", "binding", "relation", "other")
_PAIR_MIX = (0.35, 0.35, 0.2, 0.1)  # a pair's negatives: attribute, binding, relation, other
_SINGLE_MIX = (0.85, 0.0, 0.0, 0.15)  # a lone object has no binding or relation to get wrong
_TRIES = 12


def true_reading(scene: Scene) -> SceneReading:
    """What a perfect checker would read from ``scene``: its objects left to right, position, background."""
    objs = tuple(ObjectReading(o.colour, o.shape, o.size) for o in scene.objects)
    return SceneReading(objs, scene.objects[0].position if len(objs) == 1 else None, scene.background)


def is_true_of(text: str, scene: Scene) -> bool:
    """Whether every claim of ``text`` holds in ``scene`` (the checker's rule on the true attributes)."""
    spec = parse_caption(text)
    return not spec.unknown_words and score_reading(true_reading(scene), spec).all_correct


def changed_scene(scene: Scene, kind: str, rng: np.random.Generator) -> Scene | None:
    """``scene`` changed the way ``kind`` says (None where it cannot be: a lone object has no binding)."""
    objs, bg, pair = list(scene.objects), scene.background, len(scene.objects) == 2
    if kind == "other":
        return sample_scene(rng)
    if kind in ("binding", "relation") and not pair:
        return None
    if kind == "relation":
        a, b = objs
        return _scene([make_object(b.colour, b.shape, b.size, "left", True, rng),
                       make_object(a.colour, a.shape, a.size, "right", True, rng)], bg)
    if kind == "binding":
        a, b = objs
        what = str(rng.choice(["colour", "shape", "size"]))
        if getattr(a, what) == getattr(b, what):
            return None
        swap = {what: (getattr(b, what), getattr(a, what))}
        new = [make_object(*(swap.get(k, (getattr(a, k), getattr(b, k)))[i] for k in ("colour", "shape", "size")),
                           side, True, rng) for i, side in enumerate(("left", "right"))]
        return _scene(new, bg)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    what = str(rng.choice(["colour", "shape", "size", "position", "background"]))
    c, s, z, p = o.colour, o.shape, o.size, o.position
    if what == "colour":
        c = str(rng.choice([x for x in COLOURS if x != c]))
    elif what == "shape":
        s = str(rng.choice([x for x in SHAPES if x != s]))
    elif what == "size":
        z = next(x for x in SIZES if x != z)
    elif what == "position" and pair:
        return changed_scene(scene, "relation", rng)
    elif what == "position":
        p = str(rng.choice([x for x in POSITIONS if x != p]))
    else:
        bg = str(rng.choice([x for x in BACKGROUNDS if x != bg]))
    objs[i] = make_object(c, s, z, p, pair, rng)
    return _scene(objs, bg)


def _scene(objs: list, background: str) -> Scene | None:
    try:
        return Scene(tuple(objs), background)
    except ValueError:  # e.g. an object the colour of the new background: invisible, not a valid scene
        return None


def negative_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """``(caption, kind)``: a caption false of ``scene``, of a kind drawn from the pair or single-object mix."""
    mix = _PAIR_MIX if len(scene.objects) == 2 else _SINGLE_MIX
    first = str(rng.choice(NEGATIVE_KINDS, p=mix))
    for kind in (first, "attribute", "other"):  # fall back when a kind cannot be made for this scene
        for _ in range(_TRIES):
            other = changed_scene(scene, kind, rng)
            if other is None:
                break
            text = caption(other, rng, "uniform")
            if not is_heldout_caption(text) and not is_true_of(text, scene):
                return text, kind
    raise RuntimeError(f"no negative caption found for {scene}")  # unreachable in practice: 'other' always differs
