"""Offline WordNet lexicon: synonym and antonym spaces from the WordNet 3.0 data shipped with dpo-diff.

Reads only ``dpo_diff/data/wordnet_lexicon.json.gz`` (built from Debian's WordNet files by
``scripts/build_wordnet_lexicon.py``): no nltk, no apt, no downloads at run time.

For each word of the prompt:

1. **Readings.** :func:`~dpo_diff.lexicons.morphology.analyses` lists ``(pos, lemma, form)`` readings ("flies" ->
   noun *fly* plural, verb *fly* 3rd person).
2. **Part of speech.** nltk's tagger needs model data we cannot ship cheaply, so the reading is picked by a small
   heuristic instead: the WordNet tag count of each reading (how often SemCor saw the lemma with that part of
   speech) plus a few context rules from the neighbouring words (no verb right after a determiner; verbs after
   pronouns, modals and "to"; -ing/-ed after forms of "be"; a noun after an adjective; an inflected verb before a
   preposition or determiner, as in "a plane *flies* through"). It is right for the short noun-phrase prompts
   typical of text-to-image models; a wrong guess costs only option quality, and the meaning constraint filters
   the rest.
3. **Substitutes.** Ranked WordNet synonyms or antonyms of that lemma and part of speech, re-inflected into the
   word's form ("flies" -> "soars", "dogs" -> "hounds"); for antonyms, :mod:`~dpo_diff.lexicons.curated` opposites
   (colours, sizes, counts, positions, materials) come first.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpo_diff.lexicons.base import STOP_WORDS, Lexicon, LexiconError, Relation
from dpo_diff.lexicons.curated import CURATED_ANTONYMS
from dpo_diff.lexicons.morphology import Analysis, analyses, inflect, irregular_table
from dpo_diff.space import WordSpan

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "wordnet_lexicon.json.gz"

_DETERMINERS = frozenset(
    "a an the this that these those my your his her its our their some any every each no one two three four five "
    "six seven eight nine ten many several few".split())
_MODALS = frozenset("can could will would shall should may might must do does did".split())
_PRONOUNS = frozenset("i you he she it we they who which that".split())
_BE = frozenset("is are was were be been being am".split())
_PREPOSITIONS = frozenset(
    "on in at over under above below behind beside near through across into onto from with without by to of for "
    "around along against between up down out off toward towards".split())
# With equal evidence, prefer the reading most common in image prompts (noun phrases).
_POS_PRIOR = {"n": 0.3, "a": 0.2, "v": 0.1, "r": 0.0, "x": 0.0}


@functools.lru_cache(maxsize=2)
def load_wordnet_data(path: str | os.PathLike[str] = DEFAULT_PATH) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LexiconError(
            f"the WordNet lexicon file {str(p)!r} is missing; reinstall dpo-diff, or rebuild it with "
            "'python scripts/build_wordnet_lexicon.py' (needs Debian's wordnet-base and nltk)")
    with gzip.open(p, "rt", encoding="utf-8") as f:
        data = json.load(f)
    if data.get("format") != "dpo-diff/wordnet-lexicon-v1":
        raise LexiconError(f"{str(p)!r} is not a dpo-diff WordNet lexicon (format {data.get('format')!r})")
    data["irregular"] = irregular_table(data["exceptions"])
    return data


class WordNetLexicon(Lexicon):
    """Synonyms/antonyms from WordNet 3.0 (offline). See the module docstring for the procedure.

    Args:
        path: lexicon file (default: the shipped one).
        curated: put the curated image-attribute antonyms first (colours, sizes, counts, positions, materials).
        **kwargs: :class:`~dpo_diff.lexicons.base.Lexicon` options (``max_options``, ...).
    """

    name = "wordnet"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, curated: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.path = Path(path) if path is not None else DEFAULT_PATH
        self.curated = curated
        self._data: dict[str, Any] | None = None

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = load_wordnet_data(str(self.path))
        return self._data

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "curated": self.curated}

    # ------------------------------------------------------------------ analysis
    def _exists(self, pos: str, lemma: str) -> bool:
        entry = self.data["lemmas"].get(lemma)
        return entry is not None and pos in entry

    def readings(self, word: str) -> list[Analysis]:
        low = word.lower()
        out = analyses(low, self._exists, self.data["exceptions"])
        if not out and self.curated and low in CURATED_ANTONYMS:
            out = [Analysis("x", low, "base")]  # prepositions and numbers WordNet does not list
        return out

    def _count(self, a: Analysis) -> int:
        return self.data["lemmas"][a.lemma][a.pos][0] if a.pos != "x" else 0

    def tag(self, words: Sequence[str], i: int) -> Analysis | None:
        """The most plausible reading of ``words[i]`` in context (``None`` when WordNet does not know it)."""
        cands = self.readings(words[i])
        if not cands:
            return None
        prev = words[i - 1].lower() if i > 0 else None
        nxt = words[i + 1].lower() if i + 1 < len(words) else None
        next_is_noun = bool(nxt) and nxt not in STOP_WORDS and any(
            a.pos == "n" for a in self.readings(nxt or ""))
        # "a tall building": after a word that can only be an adjective, a noun is far likelier than a verb
        prev_readings = self.readings(prev) if prev and prev not in STOP_WORDS else []
        prev_is_adj = bool(prev_readings) and max(prev_readings, key=self._count).pos == "a"

        def score(a: Analysis) -> float:
            s = math.log1p(self._count(a)) + _POS_PRIOR[a.pos]
            verb_inflected = a.pos == "v" and a.form in ("3sg", "past", "ing")
            if prev in _DETERMINERS:
                s -= 3.0 if a.pos == "v" and a.form != "ing" else 0.0
                s -= 1.0 if a.pos == "r" else 0.0
                s += 1.0 if a.pos == "n" and a.form == "plural" and prev not in ("a", "an", "one", "this") else 0.0
            if a.pos == "v" and a.form == "base" and (prev in _MODALS or prev == "to"):
                s += 2.0
            if a.pos == "v" and prev in _PRONOUNS:
                s += 2.0
            if prev in _BE:
                s += 3.0 if a.pos == "v" and a.form in ("ing", "past") else 0.0
                s += 1.0 if a.pos == "a" else 0.0
            if verb_inflected and (nxt in _PREPOSITIONS or nxt in _DETERMINERS):
                s += 1.5
            if a.pos == "a" and next_is_noun:
                s += 0.5
            if prev_is_adj:
                s += 1.5 if a.pos == "n" else -1.5 if a.pos == "v" else 0.0
            return s

        return max(cands, key=score)

    # ------------------------------------------------------------------ proposals
    def _propose(self, prompt: str, words: list[WordSpan], relation: Relation) -> Mapping[str, Sequence[str]]:
        from dpo_diff.space import prompt_words

        texts = [w.text for w in prompt_words(prompt)]
        out: dict[str, list[str]] = {}
        for w in words:
            if w.text in out or w.text.lower() in {k.lower() for k in out}:
                continue
            a = self.tag(texts, w.index)
            if a is None:
                continue
            out[w.text] = self._options(a, w.text.lower(), relation)
        return out

    def _options(self, a: Analysis, surface: str, relation: Relation) -> list[str]:
        lemmas: list[str] = []
        # The curated table is about attribute values: "glass" (material) -> "metal", but "glasses" (plural noun,
        # drinking glasses or spectacles) is not a material, so inflected nouns do not use it.
        if relation == "antonym" and self.curated and not (a.pos == "n" and a.form != "base"):
            lemmas += list(CURATED_ANTONYMS.get(a.lemma, CURATED_ANTONYMS.get(surface, ())))
        if a.pos != "x":
            _count, synonyms, antonyms = self.data["lemmas"][a.lemma][a.pos]
            lemmas += synonyms if relation == "synonym" else antonyms
        if a.pos == "x":
            return lemmas
        out = []
        for lemma in lemmas:
            form = inflect(lemma, a.pos, a.form, self.data["irregular"])
            if form is not None:
                out.append(form)
        return out
