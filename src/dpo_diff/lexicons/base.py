"""The lexicon contract: where the substitutes of the synonym space and the antonym space come from.

:meth:`Lexicon.substitutes` does the bookkeeping every source needs (match proposals to the prompt's words, skip
stop words, normalise, deduplicate, drop the original word and multi-word answers, truncate, cache); a subclass
implements the single hook :meth:`Lexicon._propose`. Concrete sources: ``WordNetLexicon`` (offline, shipped data),
``LLMLexicon`` (any OpenAI-compatible endpoint, the paper's choice), ``FileLexicon`` (replays a saved space file)
and :class:`StaticLexicon` (a fixed table, for tests and user-provided dictionaries).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from dpo_diff.space import WordSpan, prompt_words

Relation = Literal["synonym", "antonym"]
RELATIONS: tuple[str, ...] = ("synonym", "antonym")


class LexiconError(ValueError):
    """A lexicon could not produce substitutes (unreachable endpoint, unusable answers, missing entry)."""


# Function words that never get a slot: substituting them changes grammar rather than content, and they have no
# useful antonyms. Spatial prepositions (on, under, above, behind, ...) are deliberately *not* here: they matter in
# image prompts and have antonyms (see ``curated.py``).
STOP_WORDS = frozenset(
    """a an the and or nor but if so yet of to for as at by from with into onto than then there here this that these
    those it its it's is are was were be been being am do does did done has have had having i me my mine you your
    yours he him his she her hers we us our ours they them their theirs who whom whose which what where when why how
    not no also just very too s t 's will would shall should can could may might must""".split()
)

_EDGE_JUNK = "\"'`“”‘’«»*_.,;:!?()[]{}<>"
_OPTION_OK = re.compile(r"^[^\W_]+(?:['’-][^\W_]+)*(?: [^\W_]+(?:['’-][^\W_]+)*)*$")


def normalize_option(text: str) -> str:
    """Clean one proposed substitute: quotes, bullets, numbering, trailing notes like '(informal)', spacing."""
    t = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", str(text))  # parenthetical remarks
    t = re.sub(r"^\s*(?:[-*•·]+|\d+[.)]|[a-z][.)])\s+", "", t)  # bullets and list numbering
    t = " ".join(t.split()).strip(_EDGE_JUNK + " ")
    # An acronym (UFO, TV) keeps its capitals; everything else is stored lowercase because SearchSpace.render
    # re-applies the user's capitalisation of the original word.
    if not (len(t) > 1 and t.isupper()):
        t = t.lower()
    return t


def clean_options(word: str, options: Sequence[str], *, max_options: int | None, allow_multiword: bool) -> list[str]:
    out: list[str] = []
    seen = {word.lower()}
    for raw in options:
        opt = normalize_option(raw)
        if not opt or opt.lower() in seen or len(opt) > 40 or not _OPTION_OK.match(opt):
            continue
        if " " in opt and not allow_multiword:
            continue  # the paper drops multi-word answers: a slot substitutes exactly one word
        seen.add(opt.lower())
        out.append(opt)
        if max_options is not None and len(out) >= max_options:
            break
    return out


class Lexicon:
    """Base class of substitute sources for the synonym space (positive prompt) and antonym space (negative prompt).

    Args:
        max_options: substitutes kept per word (the paper uses 5); ``None`` keeps all.
        allow_multiword: keep answers with spaces ("sit down"); off by default as in the paper.
        skip_stopwords: never propose substitutes for function words (:data:`STOP_WORDS`).
    """

    name = "lexicon"

    def __init__(self, *, max_options: int | None = 5, allow_multiword: bool = False, skip_stopwords: bool = True):
        if max_options is not None and max_options < 1:
            raise ValueError(f"max_options must be at least 1 (or None for all), got {max_options}")
        self.max_options = max_options
        self.allow_multiword = allow_multiword
        self.skip_stopwords = skip_stopwords
        self._cache: dict[tuple[str, str], dict[str, list[str]]] = {}

    def substitutes(self, prompt: str, relation: Relation) -> dict[str, list[str]]:
        """``{word: [substitutes]}`` for the words of ``prompt`` (prompt order, the word as written in the prompt).

        Words without substitutes are left out. Substitutes are lowercase (acronyms excepted), single words unless
        ``allow_multiword``, never the word itself, and at most ``max_options`` per word.
        """
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
        key = (prompt, relation)
        if key not in self._cache:
            words = prompt_words(prompt)
            candidates = [w for w in words if not (self.skip_stopwords and w.text.lower() in STOP_WORDS)]
            raw = self._propose(prompt, candidates, relation) if candidates else {}
            self._cache[key] = self._match(words, candidates, raw)
        return {w: list(opts) for w, opts in self._cache[key].items()}

    def _match(self, words: list[WordSpan], candidates: list[WordSpan],
               raw: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        # Proposals are keyed case-insensitively; keys that are not a word of the prompt (an LLM answering for a
        # phrase such as "coming out", or for a word it invented) are ignored.
        by_lower: dict[str, list[str]] = {}
        for k, v in raw.items():
            k2 = normalize_option(k).lower()
            if k2:
                by_lower.setdefault(k2, []).extend(v)
        allowed = {w.text.lower() for w in candidates}
        out: dict[str, list[str]] = {}
        done: set[str] = set()
        for w in words:
            low = w.text.lower()
            if low in done or low not in allowed or low not in by_lower:
                continue
            done.add(low)
            opts = clean_options(w.text, by_lower[low], max_options=self.max_options,
                                 allow_multiword=self.allow_multiword)
            if opts:
                out[w.text] = opts
        return out

    def _propose(self, prompt: str, words: list[WordSpan], relation: Relation) -> Mapping[str, Sequence[str]]:
        """Return raw proposals ``{word: [options]}`` for ``words`` (the non-stop words of ``prompt``).

        Subclasses implement only this; cleaning is done by :meth:`substitutes`.
        """
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings that change the output (recorded in each space's ``meta`` and used to decide resumability)."""
        return {"lexicon": self.name, "max_options": self.max_options, "allow_multiword": self.allow_multiword,
                "skip_stopwords": self.skip_stopwords}


class StaticLexicon(Lexicon):
    """A fixed ``{word: [options]}`` table per relation (word-level, case-insensitive); for tests and user tables."""

    name = "static"

    def __init__(self, synonyms: Mapping[str, Sequence[str]] | None = None,
                 antonyms: Mapping[str, Sequence[str]] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.tables = {
            "synonym": {k.lower(): list(v) for k, v in (synonyms or {}).items()},
            "antonym": {k.lower(): list(v) for k, v in (antonyms or {}).items()},
        }

    def _propose(self, prompt: str, words: list[WordSpan], relation: Relation) -> Mapping[str, Sequence[str]]:
        table = self.tables[relation]
        return {w.text: table[w.text.lower()] for w in words if w.text.lower() in table}
