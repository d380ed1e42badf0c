"""The world's own synonym and antonym substitutes for a prompt (the lexicon a search space is built from)."""

from __future__ import annotations

from dpo_diff.world.captions import (
    BACKGROUND_ANTONYMS,
    BACKGROUND_WORDS,
    COLOUR_ANTONYMS,
    COLOUR_WORDS,
    COUNT_ANTONYMS,
    POSITION_ANTONYMS,
    POSITION_WORDS,
    SHAPE_ANTONYMS,
    SHAPE_WORDS,
    SIZE_ANTONYMS,
    SIZE_WORDS,
    WORD_TO_BACKGROUND,
    WORD_TO_COLOUR,
    WORD_TO_POSITION,
    WORD_TO_SHAPE,
    WORD_TO_SIZE,
)

MAX_SUBSTITUTES = 5  # the paper's spaces offer up to 5 options per word


def _word_substitutes(word: str, next_word: str, first: bool) -> tuple[list[str], list[str]]:
    w = word.lower()
    if next_word == "background" and w in WORD_TO_BACKGROUND:
        key = WORD_TO_BACKGROUND[w]
        return [x for x in BACKGROUND_WORDS[key] if x != w], list(BACKGROUND_ANTONYMS[key])
    if w in WORD_TO_COLOUR:
        key = WORD_TO_COLOUR[w]
        return [x for x in COLOUR_WORDS[key] if x != w], list(COLOUR_ANTONYMS[key])
    if w in WORD_TO_SHAPE:
        key, plural = WORD_TO_SHAPE[w]
        syn = [f[1] if plural else f[0] for f in SHAPE_WORDS[key]]
        ant = [SHAPE_WORDS[a][0][1] if plural else a for a in SHAPE_ANTONYMS[key]]
        return [x for x in syn if x != w], ant
    if w in WORD_TO_SIZE:
        key = WORD_TO_SIZE[w]
        return [x for x in SIZE_WORDS[key] if x != w], list(SIZE_ANTONYMS[key])
    if w in WORD_TO_POSITION:
        key = WORD_TO_POSITION[w]
        return [x for x in POSITION_WORDS[key] if x != w], list(POSITION_ANTONYMS[key])
    if w in COUNT_ANTONYMS and (first or w == "two"):  # "a" of "on a white background" is no count
        return [], list(COUNT_ANTONYMS[w])
    return [], []


def world_substitutes(prompt: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Synonyms and antonyms for the world words of ``prompt``, keyed by the words as they appear in it.

    Feed the result to ``dpo_diff.space.space_from_substitutes(prompt, synonyms, antonyms)``. Words without
    substitutes (articles, prepositions, unknown words) are absent. A word occurring twice (e.g. "white" as colour and
    as background) keeps the substitutes of its first occurrence.
    """
    from dpo_diff.space import prompt_words

    words = [w.text for w in prompt_words(prompt)]
    synonyms: dict[str, list[str]] = {}
    antonyms: dict[str, list[str]] = {}
    for i, word in enumerate(words):
        if word in synonyms or word in antonyms:
            continue
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        syn, ant = _word_substitutes(word, nxt, i == 0)
        if syn:
            synonyms[word] = syn[:MAX_SUBSTITUTES]
        if ant:
            antonyms[word] = ant[:MAX_SUBSTITUTES]
    return synonyms, antonyms
