"""Lexicons: where the options of the synonym space and the antonym space come from.

Submodules are imported on use so ``import dpo_diff.lexicons`` stays cheap; :func:`get_lexicon` builds one by name.
"""

from __future__ import annotations

from typing import Any

from dpo_diff.lexicons.base import RELATIONS, Lexicon, LexiconError, Relation, StaticLexicon

LEXICONS = ("wordnet", "llm", "file")


def get_lexicon(name: str, **kwargs: Any) -> Lexicon:
    """Build a lexicon by name: ``wordnet`` (offline, default), ``llm`` (OpenAI-compatible endpoint; needs
    ``model``), ``file`` (replays a saved space file; needs ``path``)."""
    if name == "wordnet":
        from dpo_diff.lexicons.wordnet import WordNetLexicon

        return WordNetLexicon(**kwargs)
    if name == "llm":
        from dpo_diff.lexicons.llm import LLMLexicon

        return LLMLexicon(**kwargs)
    if name == "file":
        from dpo_diff.lexicons.file import FileLexicon

        return FileLexicon(**kwargs)
    raise LexiconError(f"unknown lexicon {name!r}; choose one of {', '.join(LEXICONS)}")


__all__ = ["LEXICONS", "RELATIONS", "Lexicon", "LexiconError", "Relation", "StaticLexicon", "get_lexicon"]
