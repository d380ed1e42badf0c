"""Search spaces for shapes-world prompts from the world's own lexicon (its true synonyms and antonyms)."""

from __future__ import annotations

WORLD_SPACE_KINDS = ("antonym", "synonym", "both")
PAPER_KINDS = {"improve": "antonym", "attack": "synonym"}
"""The paper's space of each task: :func:`world_space`'s default, the space of the registered benchmarks (the
commands' defaults are :data:`dpo_diff.search.TASK_DEFAULTS`)."""


def world_space(prompt: str, task: str, kind: str | None = None):
    """The paper's space of ``task`` (:data:`PAPER_KINDS`): antonym (negative-prompt) for ``improve``, synonym
    (positive) for ``attack``; ``kind`` asks for another: ``antonym``, ``synonym`` or ``both`` (synonym swaps and
    antonym negatives together: the hybrid space, improve's default in the commands)."""
    from dpo_diff.space import space_from_substitutes
    from dpo_diff.world.substitutes import world_substitutes

    if task not in ("improve", "attack"):
        raise ValueError(f"unknown task {task!r}; choose improve or attack")
    kind = kind or PAPER_KINDS[task]
    if kind not in WORLD_SPACE_KINDS:
        raise ValueError(f"unknown space kind {kind!r}; choose one of {list(WORLD_SPACE_KINDS)}")
    synonyms, antonyms = world_substitutes(prompt)
    return space_from_substitutes(prompt, synonyms if kind in ("synonym", "both") else None,
                                  antonyms if kind in ("antonym", "both") else None, source="shapes-world")
