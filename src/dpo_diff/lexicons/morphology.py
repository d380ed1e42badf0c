"""English lemmatisation and re-inflection for dictionary substitutes, without nltk.

WordNet stores lemmas ("fly", "dog"), but prompts hold inflected words ("flies", "dogs"). :func:`analyses` lists the
possible ``(pos, lemma, form)`` readings of a word using WordNet's own method (the ``morphy`` detachment rules plus
the irregular-form exception lists shipped with the lexicon); :func:`inflect` puts a substitute lemma back into the
same form ("soar" + 3rd person -> "soars", "hound" + plural -> "hounds"). Irregular forms come from the same
exception lists (goose -> geese, take -> took); a form that cannot be built reliably (comparatives of long
adjectives, which need "more") returns ``None`` and the substitute is dropped rather than mangled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

POS_TAGS = ("n", "v", "a", "r")
_VOWELS = "aeiou"

# (suffix, replacement, form) per part of speech, after WordNet's morphy detachment rules.
_RULES: dict[str, list[tuple[str, str, str]]] = {
    "n": [("s", "", "plural"), ("ses", "s", "plural"), ("xes", "x", "plural"), ("zes", "z", "plural"),
          ("ches", "ch", "plural"), ("shes", "sh", "plural"), ("men", "man", "plural"), ("ies", "y", "plural")],
    "v": [("s", "", "3sg"), ("ies", "y", "3sg"), ("es", "e", "3sg"), ("es", "", "3sg"), ("ed", "e", "past"),
          ("ed", "", "past"), ("ing", "e", "ing"), ("ing", "", "ing")],
    "a": [("er", "", "comparative"), ("est", "", "superlative"), ("er", "e", "comparative"),
          ("est", "e", "superlative")],
    "r": [],
}


@dataclass(frozen=True)
class Analysis:
    """One reading of a word: part of speech (``n v a r``), WordNet lemma and inflection (``base``, ``plural``,
    ``3sg``, ``past``, ``ing``, ``comparative``, ``superlative``)."""

    pos: str
    lemma: str
    form: str


def _exception_form(pos: str, inflected: str) -> str:
    if pos == "n":
        return "plural"
    if pos == "v":
        if inflected.endswith("ing"):
            return "ing"
        return "3sg" if inflected.endswith("s") and not inflected.endswith("ss") else "past"
    if pos == "a":
        return "superlative" if inflected.endswith("st") else "comparative"
    return "base"


def analyses(word: str, exists: Callable[[str, str], bool],
             exceptions: Mapping[str, Mapping[str, Sequence[str]]]) -> list[Analysis]:
    """All readings of ``word`` (lowercase) whose lemma exists in the lexicon for that part of speech."""
    out: list[Analysis] = []

    def add(pos: str, lemma: str, form: str) -> None:
        a = Analysis(pos, lemma, form)
        if exists(pos, lemma) and a not in out:
            out.append(a)

    for pos in POS_TAGS:
        add(pos, word, "base")
        for lemma in exceptions.get(pos, {}).get(word, ()):
            add(pos, lemma, _exception_form(pos, word))
        for suffix, repl, form in _RULES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                stem = word[: -len(suffix)] + repl
                add(pos, stem, form)
                if not repl and len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in _VOWELS + "ls":
                    add(pos, stem[:-1], form)  # stopped -> stop, bigger -> big (if not in the exception list)
    return out


def _syllables(word: str) -> int:
    groups, prev = 0, False
    for ch in word:
        v = ch in _VOWELS or ch == "y"
        groups += v and not prev
        prev = v
    if word.endswith("e") and not word.endswith(("le", "ee")) and groups > 1:
        groups -= 1  # silent e
    return max(groups, 1)


def _doubles(word: str) -> bool:
    """One-syllable consonant-vowel-consonant words double the final consonant (stop -> stopped, big -> bigger)."""
    return (len(word) >= 3 and word[-1] not in _VOWELS + "wxy" and word[-2] in _VOWELS
            and word[-3] not in _VOWELS and _syllables(word) == 1)


def _suffix_s(w: str) -> str:
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    if w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        return w[:-1] + "ies"
    return w + "s"


def _regular(lemma: str, form: str) -> str | None:
    w = lemma
    if form in ("plural", "3sg"):
        if form == "3sg" and w.endswith("o") and not w.endswith("oo"):
            return w + "es"  # goes, echoes
        return _suffix_s(w)
    if form == "past":
        if w.endswith("e"):
            return w + "d"
        if w.endswith("y") and w[-2:-1] not in tuple(_VOWELS):
            return w[:-1] + "ied"
        return w + w[-1] + "ed" if _doubles(w) else w + "ed"
    if form == "ing":
        if w.endswith("ie"):
            return w[:-2] + "ying"
        if w.endswith("e") and not w.endswith(("ee", "oe", "ye")) and len(w) > 2:
            return w[:-1] + "ing"
        return w + w[-1] + "ing" if _doubles(w) else w + "ing"
    if form in ("comparative", "superlative"):
        suf = "er" if form == "comparative" else "est"
        syl = _syllables(w)
        if syl > 2 or (syl == 2 and not w.endswith("y")):
            return None  # needs "more"/"most": two words, which a one-word slot cannot hold
        if w.endswith("e"):
            return w + suf[1:]
        if w.endswith("y") and w[-2:-1] not in tuple(_VOWELS):
            return w[:-1] + "i" + suf
        return w + w[-1] + suf if _doubles(w) else w + suf
    return w


def irregular_table(exceptions: Mapping[str, Mapping[str, Sequence[str]]]) -> dict[str, dict[str, list[str]]]:
    """Invert the exception lists: ``{pos: {lemma: [inflected forms]}}`` (for :func:`inflect`)."""
    inv: dict[str, dict[str, list[str]]] = {}
    for pos, table in exceptions.items():
        d: dict[str, list[str]] = {}
        for inflected, lemmas in table.items():
            for lemma in lemmas:
                d.setdefault(lemma, []).append(inflected)
        inv[pos] = {k: sorted(v) for k, v in d.items()}
    return inv


def inflect(lemma: str, pos: str, form: str, irregular: Mapping[str, Mapping[str, Sequence[str]]]) -> str | None:
    """Put ``lemma`` into ``form``; multi-word lemmas inflect their last word ("sit down" -> "sits down" is wrong,
    but "domestic dog" -> "domestic dogs" is right, and multi-word options are dropped by default anyway)."""
    if form == "base":
        return lemma
    if " " in lemma:
        head, _, last = lemma.rpartition(" ")
        tail = inflect(last, pos, form, irregular)
        return None if tail is None else f"{head} {tail}"
    forms = [f for f in irregular.get(pos, {}).get(lemma, ()) if _exception_form(pos, f) == form]
    if forms:
        if form == "past" and len(forms) > 1:
            # the lists mix simple past and participle (flew/flown, took/taken, went/gone); prefer the simple past
            forms.sort(key=lambda f: f.endswith(("n", "ne")))
        return forms[0]
    return _regular(lemma, form)
