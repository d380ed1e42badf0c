"""Search spaces for shapes-world prompts from the world's own lexicon (its true synonyms and antonyms)."""

from __future__ import annotations


def world_space(prompt: str, task: str):
    """The antonym (negative-prompt) space for ``improve``, the synonym (positive) space for ``attack``."""
    from dpo_diff.space import space_from_substitutes
    from dpo_diff.world.substitutes import world_substitutes

    if task not in ("improve", "attack"):
        raise ValueError(f"unknown task {task!r}; choose improve or attack")
    synonyms, antonyms = world_substitutes(prompt)
    return space_from_substitutes(prompt, synonyms if task == "attack" else None,
                                  antonyms if task == "improve" else None, source="shapes-world")
