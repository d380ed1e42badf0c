"""English captions of the shapes world: vocabulary, synonym/antonym tables, caption sampling and parsing.

Every attribute value has a list of words, most common first. Training captions for the *generator* draw the words
at skewed frequencies (:data:`SKEWED_WEIGHTS`: the first word nearly always, the last ones seldom), so, like real
text-to-image models, it is weaker on rare words; the *judge* sees every word equally often (``freq="uniform"``) and
so understands what a user meant even when the generator does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dpo_diff.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene

Frequency = Literal["skewed", "uniform", "common"]

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "ruby"),
    "orange": ("orange", "tangerine", "amber", "apricot"),
    "yellow": ("yellow", "golden", "lemon", "canary"),
    "green": ("green", "emerald", "jade", "lime"),
    "cyan": ("cyan", "turquoise", "aqua", "teal"),
    "blue": ("blue", "azure", "cobalt", "sapphire"),
    "purple": ("purple", "violet", "lavender", "amethyst"),
    "white": ("white", "ivory", "snowy", "pearl"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "dark", "ebony", "jet"),
    "gray": ("gray", "grey", "silver", "slate"),
    "white": COLOUR_WORDS["white"],
}
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disc", "discs"), ("disk", "disks"), ("orb", "orbs")),
    "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks"), ("tile", "tiles")),
    "triangle": (("triangle", "triangles"), ("wedge", "wedges"), ("pyramid", "pyramids"), ("trigon", "trigons")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses"), ("lozenge", "lozenges"), ("kite", "kites")),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny", "petite"),
    "big": ("big", "large", "huge", "giant"),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "center": ("center", "middle", "centre"),
    "left": ("left",),
    "right": ("right",),
    "top": ("top",),
    "bottom": ("bottom",),
}
_POSITION_PREP = {"center": "in", "left": "on", "right": "on", "top": "at", "bottom": "at"}
# Relative training frequency of the i-th word of a list for the generator (normalised per list).
SKEWED_WEIGHTS: tuple[float, ...] = (1.0, 0.03, 0.01, 0.003)
RARE_TIER = 2  # words at this index or later are "rare" (hard prompts use them)

FUNCTION_WORDS = frozenset({"a", "an", "one", "two", "the", "on", "at", "in", "of", "to", "and", "background"})

COUNT_ANTONYMS: dict[str, tuple[str, ...]] = {"a": ("two",), "an": ("two",), "one": ("two",), "two": ("one", "single")}
POSITION_ANTONYMS: dict[str, tuple[str, ...]] = {
    "left": ("right",), "right": ("left",), "top": ("bottom",), "bottom": ("top",),
    "center": ("left", "right", "top", "bottom"),
}
SIZE_ANTONYMS: dict[str, tuple[str, ...]] = {"small": ("big", "large", "huge"), "big": ("small", "little", "tiny")}
BACKGROUND_ANTONYMS: dict[str, tuple[str, ...]] = {"black": ("white", "gray"), "gray": ("black", "white"),
                                                   "white": ("black", "gray")}


def _colour_antonyms(colour: str) -> tuple[str, ...]:
    # The five object colours farthest in RGB: the ones a negative prompt should push away from first.
    c = np.array(COLOURS[colour], dtype=float)
    others = sorted((o for o in COLOURS if o != colour),
                    key=lambda o: -float(np.linalg.norm(np.array(COLOURS[o]) - c)))
    return tuple(others[:5])


COLOUR_ANTONYMS: dict[str, tuple[str, ...]] = {c: _colour_antonyms(c) for c in COLOURS}
SHAPE_ANTONYMS: dict[str, tuple[str, ...]] = {s: tuple(o for o in SHAPES if o != s) for s in SHAPES}


def _invert(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {w: k for k, words in table.items() for w in words}


WORD_TO_COLOUR = _invert(COLOUR_WORDS)
WORD_TO_BACKGROUND = _invert(BACKGROUND_WORDS)
WORD_TO_SIZE = _invert(SIZE_WORDS)
WORD_TO_POSITION = _invert(POSITION_WORDS)
WORD_TO_SHAPE: dict[str, tuple[str, bool]] = {}  # word -> (shape, is_plural)
for _shape, _forms in SHAPE_WORDS.items():
    for _sing, _plur in _forms:
        WORD_TO_SHAPE[_sing] = (_shape, False)
        WORD_TO_SHAPE[_plur] = (_shape, True)

VOCABULARY = frozenset(FUNCTION_WORDS | WORD_TO_COLOUR.keys() | WORD_TO_BACKGROUND.keys() | WORD_TO_SIZE.keys()
                       | WORD_TO_POSITION.keys() | WORD_TO_SHAPE.keys())


def word_tier(word: str) -> int:
    """Index of ``word`` in its synonym list (0 = common); -1 for words outside the attribute tables."""
    w = word.lower()
    for table in (COLOUR_WORDS, BACKGROUND_WORDS, SIZE_WORDS, POSITION_WORDS):
        for words in table.values():
            if w in words:
                return words.index(w)
    for forms in SHAPE_WORDS.values():
        for i, pair in enumerate(forms):
            if w in pair:
                return i
    return -1


# ---------------------------------------------------------------------------------------------------------------
# Sampling captions from scenes


def _pick(words: tuple, rng: np.random.Generator, freq: Frequency):
    if freq == "common" or len(words) == 1:
        return words[0]
    if freq == "uniform":
        return words[int(rng.integers(len(words)))]
    w = np.array(SKEWED_WEIGHTS[: len(words)])
    return words[int(rng.choice(len(words), p=w / w.sum()))]


def article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _object_phrase(colour: str, shape: str, size: str | None, rng: np.random.Generator, freq: Frequency,
                   det: str | None = None, plural: bool = False) -> str:
    words = []
    if size is not None:
        words.append(_pick(SIZE_WORDS[size], rng, freq))
    words.append(_pick(COLOUR_WORDS[colour], rng, freq))
    sing, plur = _pick(SHAPE_WORDS[shape], rng, freq)
    words.append(plur if plural else sing)
    det = det if det is not None else article(words[0])
    return " ".join([det, *words])


def caption(scene: Scene, rng: np.random.Generator, freq: Frequency = "skewed") -> str:
    """Sample one English caption that is true of ``scene`` (attributes may be left unmentioned)."""
    bg = ""
    if scene.background != "black" or rng.random() < 0.2:
        bgw = _pick(BACKGROUND_WORDS[scene.background], rng, freq)
        bg = f" on {article(bgw)} {bgw} background"
    objs = scene.objects
    if len(objs) == 1:
        o = objs[0]
        size = o.size if rng.random() < 0.7 else None
        det = "one" if rng.random() < 0.15 else None
        text = _object_phrase(o.colour, o.shape, size, rng, freq, det)
        if rng.random() < (0.3 if o.position == "center" else 0.9):
            text += f" {_POSITION_PREP[o.position]} the {_pick(POSITION_WORDS[o.position], rng, freq)}"
        return text + bg
    a, b = objs
    if (a.colour, a.shape, a.size) == (b.colour, b.shape, b.size):
        size = a.size if rng.random() < 0.6 else None
        return _object_phrase(a.colour, a.shape, size, rng, freq, det="two", plural=True) + bg
    pa = _object_phrase(a.colour, a.shape, a.size if rng.random() < 0.5 else None, rng, freq)
    pb = _object_phrase(b.colour, b.shape, b.size if rng.random() < 0.5 else None, rng, freq)
    form = int(rng.integers(3))
    if form == 0:
        return f"{pa} to the left of {pb}{bg}"
    if form == 1:
        return f"{pb} to the right of {pa}{bg}"
    return f"{pa} and {pb}{bg}"  # by the world's convention the first-named object stands on the left


# ---------------------------------------------------------------------------------------------------------------
# Parsing captions back to what they claim


@dataclass
class ObjectSpec:
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass
class PromptSpec:
    """What a caption claims: the objects (left to right when ``ordered``), background, and unjudgeable words."""

    objects: list[ObjectSpec] = field(default_factory=list)
    ordered: bool = True  # False for "X and Y": the checker accepts either left/right order
    background: str | None = None
    unknown_words: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.objects)


_TOKEN_RE = re.compile(r"[a-z]+")


def parse_caption(text: str) -> PromptSpec:
    """Parse a caption of the world's grammar (or something close) into a :class:`PromptSpec`.

    Words the world does not know go to ``unknown_words``: the checker cannot judge them, and says so.
    """
    tokens = _TOKEN_RE.findall(text.lower())
    spec = PromptSpec()
    pending: dict[str, str] = {}
    count_two = False
    relation: str | None = None  # "left"/"right": first-mentioned group stands on that side of the second
    groups: list[list[ObjectSpec]] = []
    i = 0
    while i < len(tokens):
        w = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if nxt == "background" and w in WORD_TO_BACKGROUND:
            spec.background = WORD_TO_BACKGROUND[w]
        elif w in WORD_TO_SHAPE:
            shape, plural = WORD_TO_SHAPE[w]
            n = 2 if (count_two or (plural and not groups and not pending.get("det"))) else 1
            group = [ObjectSpec(pending.get("colour"), shape, pending.get("size")) for _ in range(n)]
            groups.append(group)
            pending, count_two = {}, False
        elif w in WORD_TO_COLOUR:
            pending["colour"] = WORD_TO_COLOUR[w]
        elif w in WORD_TO_SIZE:
            pending["size"] = WORD_TO_SIZE[w]
        elif w == "two":
            count_two = True
        elif w in ("a", "an", "one"):
            pending["det"] = w
        elif w in ("left", "right") and nxt == "of":
            relation = w
        elif w in WORD_TO_POSITION:
            if groups and len(groups[-1]) == 1:
                groups[-1][0].position = WORD_TO_POSITION[w]
            else:
                spec.unknown_words.append(w)  # a position for a pair or before any object: not in the grammar
        elif w not in FUNCTION_WORDS:
            spec.unknown_words.append(w)
        i += 1
    if pending.get("colour") or pending.get("size"):
        # Adjectives with no shape after them ("a red"): the object exists but its shape is unstated.
        groups.append([ObjectSpec(pending.get("colour"), None, pending.get("size"))])
    if relation == "right" and len(groups) == 2:
        groups.reverse()
    objects = [o for g in groups for o in g]
    if len(objects) == 2:
        spec.ordered = relation is not None or len(groups) == 1  # two identical objects: order is moot
        if relation is not None:
            objects[0].position, objects[1].position = "left", "right"
    spec.objects = objects[:2]
    if len(objects) > 2:
        spec.unknown_words.append(f"<{len(objects)} objects>")
    return spec


def spec_words() -> dict[str, tuple[str, ...]]:
    """All attribute words by category (for documentation and tests)."""
    return {
        "colour": tuple(WORD_TO_COLOUR), "background": tuple(WORD_TO_BACKGROUND), "size": tuple(WORD_TO_SIZE),
        "position": tuple(WORD_TO_POSITION), "shape": tuple(WORD_TO_SHAPE), "sizes": SIZES, "positions": POSITIONS,
    }
