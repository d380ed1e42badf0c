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
from dataclasses import asdict, dataclass, replace
from typing import Any

from dpo_diff.search.base import Evaluation, Evaluator


@dataclass(frozen=True)
class SelectionConfig:
    """How the final answer is chosen among the evaluated candidates.

    Re-ranking spends at most ``max_share`` of the budget: with a smaller budget fewer candidates are re-ranked, and
    below two it is skipped (the search then keeps the whole budget). Empty ``validation_seeds`` are chosen by
    :meth:`resolved`: the ``num_validation`` smallest seeds above the search seeds that are not report seeds.
    """

    rerank_top: int = 0  # re-score this many of the best candidates on the validation seeds; 0: no re-ranking
    validation_seeds: tuple[int, ...] = ()  # empty: chosen by resolved()
    num_validation: int = 2
    max_share: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_seeds", tuple(int(s) for s in self.validation_seeds))
        if self.rerank_top < 0:
            raise ValueError(f"rerank_top must be >= 0, got {self.rerank_top}")
        if self.num_validation < 1:
            raise ValueError(f"num_validation must be >= 1, got {self.num_validation}")
        if not 0 < self.max_share < 1:
            raise ValueError(f"max_share must be in (0, 1), got {self.max_share}")
        if len(set(self.validation_seeds)) != len(self.validation_seeds):
            raise ValueError(f"validation seeds repeat a seed: {list(self.validation_seeds)}")

    @property
    def active(self) -> bool:
        return self.rerank_top > 0

    def resolved(self, search_seeds: Sequence[int], report_seeds: Sequence[int] = ()) -> SelectionConfig:
        """A copy with explicit validation seeds (checked against the search and report seeds)."""
        if not self.active or self.validation_seeds:
            self.check_seeds(search_seeds, report_seeds)
            return self
        taken, seeds, s = set(search_seeds) | set(report_seeds), [], max(search_seeds, default=-1) + 1
        while len(seeds) < self.num_validation:
            if s not in taken:
                seeds.append(s)
            s += 1
        return replace(self, validation_seeds=tuple(seeds))

    def top_for(self, budget: float) -> int:
        """How many candidates are re-ranked at ``budget`` (0: re-ranking skipped)."""
        n_val = len(self.validation_seeds)
        if not self.active or not n_val:
            return 0
        top = min(self.rerank_top, int((self.max_share * budget + 1e-9) // n_val))
        return top if top >= 2 else 0

    def reserve(self, budget: float) -> float:
        """Budget set aside for re-ranking (full-generation equivalents)."""
        return float(self.top_for(budget) * len(self.validation_seeds))

    def check_seeds(self, search_seeds: Sequence[int], report_seeds: Sequence[int] = ()) -> None:
        clash = set(self.validation_seeds) & (set(search_seeds) | set(report_seeds))
        if self.active and clash:
            raise ValueError(f"validation seeds {sorted(clash)} are also search or report seeds; validation seeds "
                             f"must be seeds the search never saw and the report does not use")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["validation_seeds"] = list(self.validation_seeds)
        return d


def rerank(problem, evaluator: Evaluator, selection: SelectionConfig, top: int) -> dict[str, Any]:
    """Score the search's best ``top`` candidates on the validation seeds; return the record (candidates with
    their validation losses and combined mean) with the winner first."""
    import time

    seeds = selection.validation_seeds
    best = sorted(evaluator.evaluations.values(), key=lambda e: e.objective)[:top]
    if len(best) < 2:
        return {"validation_seeds": list(seeds), "cost": 0.0, "candidates": [], "skipped": "fewer than two "
                "candidates to compare (a tiny space or budget)"}
    t0 = time.perf_counter()
    val = problem.candidate_losses([e.candidate for e in best], seeds)
    evaluator.timings["rerank"] = evaluator.timings.get("rerank", 0.0) + time.perf_counter() - t0
    rows = [_row(problem, e, [float(x) for x in val[i]]) for i, e in enumerate(best)]
    rows.sort(key=lambda r: r["objective"])  # stable: ties keep the search's order
    return {"validation_seeds": list(seeds), "cost": float(len(best) * len(seeds)), "candidates": rows}


def _row(problem, ev: Evaluation, val_losses: list[float]) -> dict[str, Any]:
    losses = list(ev.losses) + val_losses
    mean = sum(losses) / len(losses)
    return {"candidate": list(ev.candidate), "search_losses": list(ev.losses), "validation_losses": val_losses,
            "mean_loss": mean, "objective": float(problem.task.objective(mean))}
