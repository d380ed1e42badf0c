"""Held-out prompts and the train/held-out split of the shapes world.

Two mechanisms keep evaluation prompts out of training:

* a fixed hash bucket: any caption whose normalised text hashes into it (1 in 8) is never a training caption, for
  the generator or the judge, so held-out prompts are unseen *strings*;
* :data:`HELDOUT_COMBOS`: colour/shape combinations the generator never sees in any scene (the judge does), so
  prompts naming them test composition, a classic failure of text-to-image models.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

from dpo_diff.world.captions import COLOUR_WORDS, RARE_TIER, SHAPE_WORDS, SIZE_WORDS, Frequency, article, caption
from dpo_diff.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene, make_object, sample_scene

HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("yellow", "diamond"), ("cyan", "square"), ("orange", "circle")}
)
_BUCKETS = 8

Role = Literal["generator", "judge"]
Difficulty = Literal["easy", "hard"]


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def is_heldout_caption(text: str) -> bool:
    """True for captions reserved for evaluation (never used in training)."""
    h = hashlib.blake2b(normalise(text).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % _BUCKETS == 0


def sample_training_example(rng: np.random.Generator, role: Role) -> tuple[Scene, str]:
    """A (scene, caption) training pair: skewed word frequencies and no held-out combos for the generator,
    uniform frequencies for the judge; never a held-out caption."""
    excluded = HELDOUT_COMBOS if role == "generator" else frozenset()
    freq: Frequency = "skewed" if role == "generator" else "uniform"
    while True:
        scene = sample_scene(rng, excluded_pairs=excluded)
        for _ in range(8):
            text = caption(scene, rng, freq)
            if not is_heldout_caption(text):
                return scene, text


def _easy_prompt(rng: np.random.Generator) -> str:
    # One object with common words, black background, a combination the generator was trained on.
    while True:
        c, s = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        if (c, s) not in HELDOUT_COMBOS:
            break
    return _single_object_caption(c, s, rng)


def _single_object_caption(c: str, s: str, rng: np.random.Generator) -> str:
    # A random position and size for the object, captioned with common words, on the default black background.
    pos = str(rng.choice(POSITIONS))
    scene = Scene((make_object(c, s, str(rng.choice(SIZES)), pos, False),))
    while True:
        text = caption(scene, rng, "common")
        if "background" not in text:
            return text


def _rare_word_prompt(rng: np.random.Generator) -> str:
    # One object whose colour or shape (or both) is named with a rare synonym.
    c, s = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    which = int(rng.integers(3))
    cw = COLOUR_WORDS[c][int(rng.integers(RARE_TIER, len(COLOUR_WORDS[c])))] if which != 1 else c
    sw = SHAPE_WORDS[s][int(rng.integers(RARE_TIER, len(SHAPE_WORDS[s])))][0] if which != 0 else s
    words = [cw, sw]
    if rng.random() < 0.5:
        words.insert(0, str(rng.choice(SIZE_WORDS[str(rng.choice(SIZES))][:2])))
    return f"{article(words[0])} {' '.join(words)}"


def _combo_prompt(rng: np.random.Generator) -> str:
    # A colour/shape combination the generator never saw, with common words.
    c, s = sorted(HELDOUT_COMBOS)[int(rng.integers(len(HELDOUT_COMBOS)))]
    return _single_object_caption(c, s, rng)


def _pair_prompt(rng: np.random.Generator) -> str:
    # Two different objects: attribute binding and left/right relations, common words.
    while True:
        scene = sample_scene(rng, p_pair=1.0, p_identical=0.0, p_background=0.0)
        text = caption(scene, rng, "common")
        if "background" not in text:
            return text


_HARD_KINDS = (_rare_word_prompt, _combo_prompt, _pair_prompt)


def heldout_prompts(difficulty: Difficulty, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct held-out prompts (deterministic in ``seed``).

    ``"easy"``: one object, common words, trained colour/shape combination (the generator should get these right).
    ``"hard"``: in equal shares, rare synonyms, colour/shape combinations the generator never saw, and two
    different objects with a left/right relation (the generator often fails these: room to improve).
    """
    if difficulty not in ("easy", "hard"):
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}")
    rng = np.random.default_rng([seed, 0 if difficulty == "easy" else 1])
    out: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200_000:
            raise ValueError(f"could not find {n} distinct held-out {difficulty} prompts (found {len(out)})")
        gen = _easy_prompt if difficulty == "easy" else _HARD_KINDS[len(out) % len(_HARD_KINDS)]
        text = gen(rng)
        # Rare-word and combo prompts are unseen by construction; other kinds must also be in the held-out bucket.
        unseen = gen in (_rare_word_prompt, _combo_prompt) or is_heldout_caption(text)
        if text in seen or not unseen:
            continue
        if gen is _rare_word_prompt and not is_heldout_caption(text):
            # A rare-word caption outside the bucket could have been drawn (seldom) in training; skip it too.
            continue
        seen.add(text)
        out.append(text)
    return out


def scene_for_prompt(prompt: str, rng: np.random.Generator) -> Scene:
    """A ground-truth scene that satisfies ``prompt`` (unstated attributes drawn from ``rng``).

    Raises ``ValueError`` for prompts that describe no object or an impossible scene (e.g. a white object on a
    white background).
    """
    from dpo_diff.world.captions import parse_caption
    from dpo_diff.world.scene import object_colours

    spec = parse_caption(prompt)
    if not spec.objects:
        raise ValueError(f"prompt {prompt!r} describes no object of the world")
    background = spec.background or "black"
    pair = spec.count == 2
    objs = []
    for i, o in enumerate(spec.objects):
        colour = o.colour or str(rng.choice(object_colours(background)))
        shape = o.shape or str(rng.choice(SHAPES))
        size = o.size or str(rng.choice(SIZES))
        position = ("left", "right")[i] if pair else (o.position or str(rng.choice(POSITIONS)))
        objs.append(make_object(colour, shape, size, position, pair, rng))
    if pair and not spec.ordered and rng.random() < 0.5:
        a, b = objs
        objs = [make_object(b.colour, b.shape, b.size, "left", True, rng),
                make_object(a.colour, a.shape, a.size, "right", True, rng)]
    return Scene(tuple(objs), background)


def prompt_kind(prompt: str) -> str:
    """Which held-out category a prompt belongs to: ``"two_objects"``, ``"unseen_combo"``, ``"rare_word"``,
    ``"easy"`` (one object, common words) or ``"other"`` (e.g. words outside the world)."""
    from dpo_diff.world.captions import parse_caption, word_tier

    spec = parse_caption(prompt)
    if spec.unknown_words or not spec.objects:
        return "other"
    if spec.count == 2:
        return "two_objects"
    if (spec.objects[0].colour, spec.objects[0].shape) in HELDOUT_COMBOS:
        return "unseen_combo"
    if any(word_tier(w) >= RARE_TIER for w in prompt.lower().split()):
        return "rare_word"
    return "easy" if all(word_tier(w) <= 0 for w in prompt.lower().split()) else "other"
