"""Random search: the equal-budget baseline (uniform distinct candidates until the budget is spent)."""

from __future__ import annotations

from dpo_diff.problem import Problem
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.evolution import distinct_random
from dpo_diff.seeding import rng as make_rng


def random_search(problem: Problem, evaluator: Evaluator, *, seed: int = 0, batch: int = 8) -> SearchResult:
    rng = make_rng(seed, "random")
    try:
        while True:
            seen = set(evaluator.evaluations) | set(evaluator.rejected)
            cands = distinct_random(problem.space.sizes, batch, rng, exclude=seen)
            if not cands:
                break  # every candidate has been tried
            evaluator.evaluate(cands, source="random")
    except BudgetExhausted:
        pass
    return finish("random", evaluator)
