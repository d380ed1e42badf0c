"""Seed-robust selection of the final answer.

A candidate that wins on one image seed is often a fluke of that seed (a negative prompt that fixes one image and
hurts the rest). Two remedies, both charged to the same budget:

* search on several image seeds (every evaluation costs one generation per seed), or
* **re-rank**: after the search, score its ``top`` best candidates on extra *validation* seeds and pick the best
  mean over search and validation seeds. The re-ranking budget is reserved before the search starts.

Validation seeds must differ from the search seeds and from the held-out report seeds (those measure the result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dpo_diff.search.base import Evaluation, Evaluator


@dataclass(frozen=True)
class SelectionConfig:
    """How the final answer is chosen among the evaluated candidates."""

    rerank_top: int = 0  # re-score this many of the best candidates on the validation seeds; 0: no re-ranking
    validation_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_seeds", tuple(int(s) for s in self.validation_seeds))
        if self.rerank_top < 0:
            raise ValueError(f"rerank_top must be >= 0, got {self.rerank_top}")
        if self.rerank_top and not self.validation_seeds:
            raise ValueError(f"rerank_top={self.rerank_top} needs validation seeds (e.g. --validation-seeds 1,2)")
        if len(set(self.validation_seeds)) != len(self.validation_seeds):
            raise ValueError(f"validation seeds repeat a seed: {list(self.validation_seeds)}")

    @property
    def active(self) -> bool:
        return self.rerank_top > 0

    def reserve(self) -> float:
        """Budget set aside for re-ranking (full-generation equivalents)."""
        return float(self.rerank_top * len(self.validation_seeds)) if self.active else 0.0

    def check_seeds(self, search_seeds: Sequence[int], report_seeds: Sequence[int] = ()) -> None:
        clash = set(self.validation_seeds) & (set(search_seeds) | set(report_seeds))
        if self.active and clash:
            raise ValueError(f"validation seeds {sorted(clash)} are also search or report seeds; validation seeds "
                             f"must be seeds the search never saw and the report does not use")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["validation_seeds"] = list(self.validation_seeds)
        return d


def rerank(problem, evaluator: Evaluator, selection: SelectionConfig, budget: float) -> dict[str, Any]:
    """Score the search's best ``rerank_top`` candidates on the validation seeds within ``budget``; return the
    record (candidates with their validation losses and combined mean) with the winner first."""
    import time

    seeds, n_val = selection.validation_seeds, len(selection.validation_seeds)
    ranked = sorted(evaluator.evaluations.values(), key=lambda e: e.objective)
    top = ranked[: min(selection.rerank_top, int((budget + 1e-9) // n_val))]
    if len(top) < 2:
        return {"validation_seeds": list(seeds), "cost": 0.0, "candidates": [], "skipped": "fewer than two "
                "candidates to compare (a tiny space or budget)"}
    t0 = time.perf_counter()
    val = problem.candidate_losses([e.candidate for e in top], seeds)
    evaluator.timings["rerank"] = evaluator.timings.get("rerank", 0.0) + time.perf_counter() - t0
    rows = [_row(problem, e, [float(x) for x in val[i]]) for i, e in enumerate(top)]
    rows.sort(key=lambda r: r["objective"])  # stable: ties keep the search's order
    return {"validation_seeds": list(seeds), "cost": float(len(top) * n_val), "candidates": rows}


def _row(problem, ev: Evaluation, val_losses: list[float]) -> dict[str, Any]:
    losses = list(ev.losses) + val_losses
    mean = sum(losses) / len(losses)
    return {"candidate": list(ev.candidate), "search_losses": list(ev.losses), "validation_losses": val_losses,
            "mean_loss": mean, "objective": float(problem.task.objective(mean))}
