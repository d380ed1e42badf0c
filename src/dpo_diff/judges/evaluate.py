"""Cross-judge evaluation: score the user prompt's and the answer's final images with judges the search did not use
(``--eval-judges``) and with each term of the objective it did use, on the same images (one decode, many judges).

The table goes to ``result.json`` and bench records under ``"judges"``: per judge its role (``"objective"``: the
judge or a term the search optimized; ``"eval"``: an evaluator it never saw) and the per-seed losses of the user
prompt and of the answer on the search and report seeds. Every judge's loss is lower-is-better (the checker's is
``1 - all_correct``), so one sign rule reads all columns: improve wants it down, attack up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dpo_diff.judges.spec import JudgeRegistry, parse_judges


def load_eval_judges(specs: Sequence[str] | str | None, registry: JudgeRegistry) -> dict[str, Any]:
    """``{spec text: judge}`` for ``--eval-judges`` (loaded through ``registry``, so models are shared)."""
    return {str(s): registry.load(s) for s in parse_judges(list(specs) if not isinstance(specs, str) else specs)}


def objective_judges(judge: Any) -> dict[str, Any]:
    """The judges the search optimized: an objective's terms, or the single judge itself."""
    from dpo_diff.judges.objective import Objective

    if isinstance(judge, Objective):
        return dict(zip(judge.labels, judge.judges))
    return {getattr(judge, "name", "judge"): judge}


def judge_table(optimized: dict[str, Any], evaluators: dict[str, Any], user_images: torch.Tensor,
                best_images: torch.Tensor, prompt: str, seeds: Sequence[int], n_search: int) -> dict[str, Any]:
    """Per judge: role and per-seed losses of the user's and the answer's images (first ``n_search`` images of each
    are on search seeds, the rest on report seeds)."""
    table: dict[str, Any] = {}
    roles = [(name, j, "objective") for name, j in optimized.items()]
    roles += [(name, j, "eval") for name, j in evaluators.items() if name not in optimized]
    keys = [str(s) for s in seeds]
    for name, judge, role in roles:
        entry: dict[str, Any] = {"role": role}
        for who, images in (("user", user_images), ("best", best_images)):
            with torch.no_grad():
                losses = [float(x) for x in judge.loss(images, prompt).cpu()]
            entry[who] = {"search_losses": dict(zip(keys[:n_search], losses[:n_search])),
                          "report_losses": dict(zip(keys[n_search:], losses[n_search:]))}
        table[name] = entry
    return table
