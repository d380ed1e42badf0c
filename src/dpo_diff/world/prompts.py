"""Held-out prompts and the train/held-out split of the shapes world.

Two mechanisms keep evaluation prompts out of training:

* a fixed hash bucket: any caption whose normalised text hashes into it (1 in 8) is never a training caption, for
  the generator or the judge, so held-out prompts are unseen *strings*;
* :data:`HELDOUT_COMBOS`: colour/shape combinations the generator never sees in any scene (the judge does), so
  prompts naming them test composition, a classic failure of text-to-image models.

Two pools of held-out prompts (``heldout_prompts(..., pool=...)``):

* ``"v1"`` (the default; every result before the evaluation protocol): small (117 distinct easy prompts), so prompt
  seeds share most easy prompts. Development work uses it (``DEV_PROMPT_SEEDS``).
* ``"eval"``: every unseen caption of a wider grammar (background phrases, "one", positions for rare words) that
  the ``"v1"`` pool can never return, so no earlier tuning step can have seen one. Only the pre-registered
  :data:`EVAL_PROMPT_SEEDS` draw from it, and each owns a disjoint slice: two evaluation seeds share no prompt.
  See ``docs/evaluation_protocol.md``.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import cache
from typing import Literal

import numpy as np

from dpo_diff.world.captions import (
    _POSITION_PREP,
    COLOUR_WORDS,
    RARE_TIER,
    SHAPE_WORDS,
    SIZE_WORDS,
    Frequency,
    article,
    caption,
)
from dpo_diff.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene, make_object, sample_scene

HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("yellow", "diamond"), ("cyan", "square"), ("orange", "circle")}
)
_BUCKETS = 8

Role = Literal["generator", "judge"]
Difficulty = Literal["easy", "hard"]
Pool = Literal["v1", "eval", "eval2"]
POOLS: tuple[str, ...] = ("v1", "eval", "eval2")

# The evaluation protocol (docs/evaluation_protocol.md), pre-registered before any result on them was looked at.
# No training, tuning, prompt selection or model-selection step may use these prompt seeds or image seeds.
EVAL_PROMPT_SEEDS: tuple[int, ...] = (1000, 1001, 1002, 1003, 1004)
_EVAL_STRIDE = 5  # seed EVAL_PROMPT_SEEDS[k] owns eval_pool(kind)[k::5]: fixed forever, whatever is added later
# The second evaluation pool ("eval2", docs/evaluation_protocol.md): hard prompts that no seed above can ever return.
EVAL2_PROMPT_SEEDS: tuple[int, ...] = tuple(range(1005, 1015))
_EVAL2_KINDS = ("rare_word", "two_objects")  # the only kinds with prompts left beyond the first pool's reach
EVAL_IMAGE_SEEDS: tuple[int, ...] = tuple(range(9000, 9026))  # added 2026-12-07: 9016-9017, 9018-9025
EVAL_SELECT_SEEDS = EVAL_IMAGE_SEEDS[0:2]  # `dpo-diff select` on evaluation prompts
EVAL_REPORT_SEEDS = EVAL_IMAGE_SEEDS[2:10]  # `--report-seeds` of evaluation runs
EVAL_QUALITY_SEEDS = EVAL_IMAGE_SEEDS[10:15]  # benchmarks/world_quality.py: one per evaluation prompt seed
# Report seeds of the second pool's evaluations from prompt seed 1006 on (docs/evaluation_protocol.md): fresh seeds
# for the report, none of them a search, validation or screening seed; they share 9010-9014 with the first pool's
# model-quality measurements, which scored other prompts and chose nothing.
EVAL2_REPORT_SEEDS = EVAL_IMAGE_SEEDS[10:18]
# Report seeds of the judge evaluation (selection judges, prompt seed 1007 of "eval2"): unused by any run before it,
# so no search, tuning or report of the sparse-first evaluation (1006) shares its images.
EVAL2_JUDGE_REPORT_SEEDS = EVAL_IMAGE_SEEDS[18:26]
# Tuning and model selection use the "v1" pool with these prompt seeds (0 and 1 were used before the protocol).
DEV_PROMPT_SEEDS: tuple[int, ...] = tuple(range(2, 1000))
_EVAL_SHUFFLE_SEED = 20261201  # fixes the order of the evaluation pool once; never change it


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


def heldout_prompts(difficulty: Difficulty, n: int, seed: int = 0, pool: Pool = "v1") -> list[str]:
    """``n`` distinct held-out prompts (deterministic in ``seed``).

    ``"easy"``: one object, common words, trained colour/shape combination (the generator should get these right).
    ``"hard"``: in equal shares, rare synonyms, colour/shape combinations the generator never saw, and two
    different objects with a left/right relation (the generator often fails these: room to improve).

    ``pool="v1"`` (default) gives the lists every result before the evaluation protocol used. ``pool="eval"`` takes
    the ``seed``-th slice of the evaluation pool (:func:`eval_pool`); ``seed`` must be one of
    :data:`EVAL_PROMPT_SEEDS` and a shorter list is a prefix of a longer one. ``pool="eval2"`` does the same for the
    second evaluation pool (:func:`eval2_pool`: hard prompts only, rare words and two objects alternating; seeds
    :data:`EVAL2_PROMPT_SEEDS`).
    """
    if difficulty not in ("easy", "hard"):
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}")
    if pool == "eval":
        return _eval_prompts(difficulty, n, seed)
    if pool == "eval2":
        return _eval2_prompts(difficulty, n, seed)
    if pool != "v1":
        raise ValueError(f"pool must be one of {list(POOLS)}, got {pool!r}")
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


# ---------------------------------------------------------------------------------------------------------------
# The evaluation pool: every unseen caption of a wider grammar, minus everything the "v1" pool can return.

_HARD_ORDER = ("rare_word", "unseen_combo", "two_objects")  # the order of hard kinds within a list, as in "v1"


def _position_phrases() -> tuple[str, ...]:
    # "" (position unstated) or the common-word phrase of one of the five positions, as captions() writes it.
    return ("", *(f" {_POSITION_PREP[p]} the {p}" for p in POSITIONS))


def _background_phrases(colours: tuple[str, ...]) -> list[tuple[str, str]]:
    # (phrase, background) pairs a caption of objects in ``colours`` may end with ("": black, unstated).
    out = [("", "black")]
    for bg in ("black", "gray", "white"):
        if bg not in colours:
            out.append((f" on {article(bg)} {bg} background", bg))
    return out


def _size_words(size_options: tuple[str, ...]) -> tuple[str, ...]:
    return ("", *(f"{w} " for w in size_options))


def _single_captions(colour_word: str, shape_word: str, colour: str, sizes: tuple[str, ...], extended: bool):
    # Captions of one object: [det] [size] colour shape [position] [background]; the "v1" grammar has no "one",
    # position or background for rare words (``extended=False``).
    for size in _size_words(sizes):
        words = f"{size}{colour_word} {shape_word}"
        dets = (article(words), "one") if extended else (article(words),)
        for det in dets:
            for pos in _position_phrases() if extended else ("",):
                for bg, _ in _background_phrases((colour,)) if extended else [("", "black")]:
                    yield f"{det} {words}{pos}{bg}"


def _common_single(combos, with_background: bool) -> set[str]:
    out = set()
    for c, s in combos:
        for text in _single_captions(c, s, c, SIZES, extended=True):
            if with_background or "background" not in text:
                out.add(text)
    return out


def _rare_words(extended: bool) -> set[str]:
    out = set()
    for c in COLOURS:
        for s in SHAPES:
            rare_c = [(w, True) for w in COLOUR_WORDS[c][RARE_TIER:]] + [(c, False)]
            rare_s = [(f[0], True) for f in SHAPE_WORDS[s][RARE_TIER:]] + [(s, False)]
            for (cw, rc), (sw, rs) in itertools.product(rare_c, rare_s):
                if not (rc or rs):
                    continue
                sizes = tuple(w for size in SIZES for w in SIZE_WORDS[size][:2])
                out.update(_single_captions(cw, sw, c, sizes, extended))
    return out


def _pairs(with_background: bool) -> set[str]:
    # Two different objects, common words: "A to the left of B", "B to the right of A", "A and B" (+ background).
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    out = set()
    for (c1, s1), (c2, s2) in itertools.permutations(objects, 2):
        phrases = [[f"{article(w)} {w}" for w in (f"{c} {s}", f"small {c} {s}", f"big {c} {s}")]
                   for c, s in ((c1, s1), (c2, s2))]
        bgs = _background_phrases((c1, c2)) if with_background else [("", "black")]
        for pa, pb in itertools.product(*phrases):
            for bg, _ in bgs:
                out.update((f"{pa} to the left of {pb}{bg}", f"{pb} to the right of {pa}{bg}", f"{pa} and {pb}{bg}"))
    return out


@cache
def v1_pool(kind: str) -> frozenset[str]:
    """Every prompt ``heldout_prompts(..., pool="v1")`` can return for ``kind`` (``"easy"`` or one of the hard
    kinds ``"rare_word"``, ``"unseen_combo"``, ``"two_objects"``)."""
    trained = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS]
    if kind == "easy":
        texts = _common_single(trained, with_background=False)
    elif kind == "rare_word":
        texts = _rare_words(extended=False)
    elif kind == "unseen_combo":
        return frozenset(_common_single(sorted(HELDOUT_COMBOS), with_background=False))
    elif kind == "two_objects":
        texts = _pairs(with_background=False)
    else:
        raise ValueError(f"unknown prompt kind {kind!r}")
    return frozenset(t for t in texts if is_heldout_caption(t))


@cache
def eval_pool(kind: str) -> tuple[str, ...]:
    """The evaluation pool of ``kind`` (as in :func:`v1_pool`), in its fixed shuffled order.

    Held-out captions (the hash bucket; unseen combinations need not be in it, as in ``"v1"``) of the same kinds
    with background phrases, the determiner "one", and positions for rare words, minus every prompt of every
    ``"v1"`` kind, which earlier tuning may have seen.
    """
    trained = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS]
    if kind == "easy":
        texts = {t for t in _common_single(trained, with_background=True) if is_heldout_caption(t)}
    elif kind == "rare_word":
        texts = {t for t in _rare_words(extended=True) if is_heldout_caption(t)}
    elif kind == "unseen_combo":
        texts = _common_single(sorted(HELDOUT_COMBOS), with_background=True)
    elif kind == "two_objects":
        texts = {t for t in _pairs(with_background=True) if is_heldout_caption(t)}
    else:
        raise ValueError(f"unknown prompt kind {kind!r}")
    used = frozenset().union(*(v1_pool(k) for k in ("easy", *_HARD_ORDER)))
    ordered = sorted(texts - used)
    rng = np.random.default_rng([_EVAL_SHUFFLE_SEED, ("easy", *_HARD_ORDER).index(kind)])
    return tuple(ordered[i] for i in rng.permutation(len(ordered)))


def _eval_prompts(difficulty: Difficulty, n: int, seed: int) -> list[str]:
    if seed not in EVAL_PROMPT_SEEDS:
        raise ValueError(f"the evaluation pool is drawn only with the pre-registered prompt seeds "
                         f"{list(EVAL_PROMPT_SEEDS)}, got {seed}; use pool='v1' (seeds {DEV_PROMPT_SEEDS[0]}-"
                         f"{DEV_PROMPT_SEEDS[-1]}) for development")
    k = EVAL_PROMPT_SEEDS.index(seed)
    kinds = ("easy",) if difficulty == "easy" else _HARD_ORDER
    slices = {kind: eval_pool(kind)[k::_EVAL_STRIDE] for kind in kinds}
    return _interleave(slices, n, f"evaluation pool's {difficulty}")


def _interleave(slices: dict[str, tuple[str, ...]], n: int, what: str) -> list[str]:
    """The first ``n`` prompts taking the kinds in turn (a shorter list is a prefix of a longer one)."""
    kinds = tuple(slices)
    want = {kind: len(range(i, n, len(kinds))) for i, kind in enumerate(kinds)}
    short = {kind: len(slices[kind]) for kind in kinds if want[kind] > len(slices[kind])}
    if short:
        raise ValueError(f"the {what} prompts per seed are too few for n={n}: {short}")
    return [slices[kinds[i % len(kinds)]][i // len(kinds)] for i in range(n)]


def eval_reach(kind: str) -> int:
    """How far into :func:`eval_pool` the seeds :data:`EVAL_PROMPT_SEEDS` can ever reach. Their hard lists take the
    three hard kinds in turn and end where a seed's unseen-combination slice ends, so the rare-word and two-object
    prompts beyond that are never returned by any of them."""
    if kind not in _HARD_ORDER:
        return len(eval_pool(kind))
    longest_combo_slice = -(-len(eval_pool("unseen_combo")) // _EVAL_STRIDE)
    return min(len(eval_pool(kind)), _EVAL_STRIDE * longest_combo_slice)


def eval2_pool(kind: str) -> tuple[str, ...]:
    """The second evaluation pool of ``kind`` (rare words or two objects): :func:`eval_pool` beyond
    :func:`eval_reach`, in the same fixed order, so no first-pool evaluation seed can have seen one of them."""
    if kind not in _EVAL2_KINDS:
        raise ValueError(f"the eval2 pool has only {list(_EVAL2_KINDS)} prompts (every unseen easy and "
                         f"unseen-combination caption is in the v1 or eval pool), got {kind!r}")
    return eval_pool(kind)[eval_reach(kind):]


def _eval2_prompts(difficulty: Difficulty, n: int, seed: int) -> list[str]:
    if seed not in EVAL2_PROMPT_SEEDS:
        raise ValueError(f"the eval2 pool is drawn only with its pre-registered prompt seeds "
                         f"{EVAL2_PROMPT_SEEDS[0]}-{EVAL2_PROMPT_SEEDS[-1]}, got {seed}; use pool='v1' for "
                         f"development")
    if difficulty != "hard":
        raise ValueError("the eval2 pool has hard prompts only (rare words and two objects); every unseen easy "
                         "caption of the world's grammar is in the v1 or eval pool")
    k, every = EVAL2_PROMPT_SEEDS.index(seed), len(EVAL2_PROMPT_SEEDS)
    return _interleave({kind: eval2_pool(kind)[k::every] for kind in _EVAL2_KINDS}, n, "eval2 pool's hard")


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
