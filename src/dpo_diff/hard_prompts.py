"""Hard-prompt selection, the paper's protocol: score user prompts with the judge, keep those the model gets wrong.

Improve keeps prompts whose spherical CLIP loss is *above* the threshold (paper: 0.85 with SD v1.4 and CLIP
ViT-B/32: the model fails them); attack keeps prompts *below* it (the model renders them well, so there is something
to break). Scores are cached in a JSONL file as they are computed, so an interrupted selection resumes.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_diff.files import append_jsonl, read_jsonl


class EmptySelection(ValueError):
    """No prompt passed the threshold (the message gives the losses)."""


@dataclass
class Selection:
    selected: dict[str, float]  # prompt -> mean loss, in file order
    scores: dict[str, list[float]]  # every scored prompt -> per-seed losses


def score_prompts(prompts: Sequence[str], backend: Any, judge: Any, seeds: Sequence[int], *, steps: int,
                  guidance: float, batch_size: int = 8, cache: str | os.PathLike[str] | None = None,
                  settings: dict[str, Any] | None = None,
                  on_score: Callable[[int, int, str, list[float]], None] | None = None) -> dict[str, list[float]]:
    """Per-seed judge losses of each prompt's own images (``{prompt: [loss per seed]}``).

    ``cache`` (JSONL; first line the ``settings``) keeps finished scores: prompts already there under the same
    settings are not generated again; a cache of other settings is started afresh.
    """
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.space import SearchSpace

    settings = {**(settings or {}), "seeds": list(seeds), "steps": steps, "guidance": guidance}
    path = Path(cache) if cache is not None else None
    done = _read_cache(path, settings) if path is not None else {}
    sampling = SamplingConfig(steps, guidance, batch_size=batch_size)
    out: dict[str, list[float]] = {}
    for i, prompt in enumerate(prompts):
        if prompt in done:
            out[prompt] = done[prompt]
            continue
        problem = Problem(SearchSpace(prompt), Task("improve"), backend, judge, sampling)
        losses = [float(x) for x in problem.losses([problem.space.render(problem.space.default)], seeds)[0][0]]
        out[prompt] = losses
        if path is not None:
            append_jsonl(path, {"prompt": prompt, "losses": losses})
        if on_score:
            on_score(i, len(prompts), prompt, losses)
    return out


def _cache_line(d: dict[str, Any]) -> tuple[str, Any]:
    if "settings" in d:
        return "settings", d["settings"]
    losses = [float(x) for x in d["losses"]]
    if not isinstance(d["prompt"], str) or not losses:
        raise TypeError("expected a prompt and its losses")
    return d["prompt"], losses


def _read_cache(path: Path, settings: dict[str, Any]) -> dict[str, list[float]]:
    """Scores cached under the same ``settings`` (unreadable lines are skipped with a warning, never removed); a
    missing cache or one of other settings is started afresh with a header line."""
    from dpo_diff.space import atomic_write_text

    lines = read_jsonl(path, _cache_line, what="score line").records
    if lines and lines[0] == ("settings", settings):
        return {p: v for p, v in lines[1:] if p != "settings"}
    atomic_write_text(path, json.dumps({"settings": settings}) + "\n")
    return {}


def select(scores: dict[str, list[float]], task: str, threshold: float, max_prompts: int | None = None) -> Selection:
    """Keep prompts with mean loss above (improve) or below (attack) ``threshold``; the first ``max_prompts``."""
    if task not in ("improve", "attack"):
        raise ValueError(f"unknown task {task!r}; choose improve or attack")
    means = {p: sum(v) / len(v) for p, v in scores.items()}
    keep = {p: m for p, m in means.items() if (m > threshold if task == "improve" else m < threshold)}
    if not keep:
        values = sorted(means.values())
        side = "above" if task == "improve" else "below"
        q = statistics.quantiles(values, n=4) if len(values) >= 2 else values * 3
        raise EmptySelection(
            f"no prompt has a loss {side} {threshold} ({task}); the {len(values)} losses range from {values[0]:.4f} "
            f"to {values[-1]:.4f} (quartiles {q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f}); choose a threshold inside that "
            f"range (judges and models differ from the paper's SD v1.4 + CLIP ViT-B/32)")
    if max_prompts is not None:
        keep = dict(list(keep.items())[:max_prompts])
    return Selection(keep, dict(scores))
