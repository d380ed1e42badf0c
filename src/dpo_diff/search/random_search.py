"""Random search: the equal-budget baseline (uniform distinct candidates until the budget is spent)."""

from __future__ import annotations

from dpo_diff.problem import Problem
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.evolution import distinct_random
from dpo_diff.seeding import rng as make_rng


def random_search(problem: Problem, evaluator: Evaluator, *, seed: int = 0, batch: int = 8) -> SearchResult:
    rng = make_rng(seed, "random")
    barren = 0  # consecutive batches entirely rejected by the meaning constraint
    try:
        while barren < 20:
            seen = set(evaluator.evaluations) | set(evaluator.rejected)
            cands = distinct_random(problem.space.sizes, batch, rng, exclude=seen)
            if not cands:
                break  # every candidate has been tried
            n = len(evaluator.evaluations)
            evaluator.evaluate(cands, source="random")
            barren = barren + 1 if len(evaluator.evaluations) == n else 0
    except BudgetExhausted:
        pass
    return finish("random", evaluator)
