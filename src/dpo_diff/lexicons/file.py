"""File lexicon: replays the substitutes stored in a saved space file (ours or the reference layout).

Lets a space built once with an LLM (or downloaded from the reference repository) be rebuilt offline with other
settings (another kind, a meaning constraint, overrides) without asking the LLM again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpo_diff.lexicons.base import Lexicon, LexiconError, Relation
from dpo_diff.space import SearchSpace, WordSpan, load_spaces


class FileLexicon(Lexicon):
    """Substitutes read from the positive (synonym) and word-bound negative (antonym) slots of a space file."""

    name = "file"

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.path = Path(path)
        self._spaces: dict[str, SearchSpace] | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path.name}

    def _find(self, prompt: str) -> SearchSpace:
        if self._spaces is None:
            self._spaces = load_spaces(self.path)
        if prompt in self._spaces:
            return self._spaces[prompt]
        folded = {k.strip().lower(): v for k, v in self._spaces.items()}
        if prompt.strip().lower() in folded:
            return folded[prompt.strip().lower()]
        raise LexiconError(f"{str(self.path)!r} has no entry for prompt {prompt!r} ({len(self._spaces)} prompts in "
                           "the file); build it with another lexicon first")

    def _propose(self, prompt: str, words: list[WordSpan], relation: Relation) -> Mapping[str, Sequence[str]]:
        space = self._find(prompt)
        out: dict[str, list[str]] = {}
        for slot in space.slots:
            if relation == "synonym" and slot.target == "positive":
                out.setdefault(slot.word, []).extend(slot.options[1:])
            elif relation == "antonym" and slot.target == "negative" and slot.word and slot.source != "nplib":
                out.setdefault(slot.word, []).extend(slot.options[1:])
        return out
