"""Search spaces for shapes-world prompts from the world's own lexicon (its true synonyms and antonyms)."""

from __future__ import annotations

WORLD_SPACE_KINDS = ("antonym", "synonym", "both")


def world_space(prompt: str, task: str, kind: str | None = None):
    """The antonym (negative-prompt) space for ``improve``, the synonym (positive) space for ``attack``; ``kind``
    asks for another: ``antonym``, ``synonym`` or ``both`` (synonym swaps and antonym negatives together, e.g. an
    improve search that may also rewrite the prompt)."""
    from dpo_diff.space import space_from_substitutes
    from dpo_diff.world.substitutes import world_substitutes

    if task not in ("improve", "attack"):
        raise ValueError(f"unknown task {task!r}; choose improve or attack")
    kind = kind or ("antonym" if task == "improve" else "synonym")
    if kind not in WORLD_SPACE_KINDS:
        raise ValueError(f"unknown space kind {kind!r}; choose one of {list(WORLD_SPACE_KINDS)}")
    synonyms, antonyms = world_substitutes(prompt)
    return space_from_substitutes(prompt, synonyms if kind in ("synonym", "both") else None,
                                  antonyms if kind in ("antonym", "both") else None, source="shapes-world")
