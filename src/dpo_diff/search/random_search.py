"""Random search: the equal-budget baseline (distinct candidates until the budget is spent), drawn by a proposal:
uniform over the product space (the paper's baseline) or sparse edits of the user prompt
(:mod:`dpo_diff.search.proposal`)."""

from __future__ import annotations

from dpo_diff.problem import Problem
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.proposal import UNIFORM, Proposal
from dpo_diff.seeding import rng as make_rng


def random_search(problem: Problem, evaluator: Evaluator, *, seed: int = 0, batch: int = 8,
                  proposal: Proposal = UNIFORM) -> SearchResult:
    rng = make_rng(seed, "random")
    barren = 0  # consecutive batches entirely rejected by the meaning constraint
    try:
        while barren < 20:
            seen = set(evaluator.evaluations) | set(evaluator.rejected)
            cands = proposal.distinct(problem.space.sizes, batch, rng, exclude=seen)
            if not cands:
                break  # every candidate has been tried
            n = len(evaluator.evaluations)
            evaluator.evaluate(cands, source="random")
            barren = barren + 1 if len(evaluator.evaluations) == n else 0
    except BudgetExhausted:
        pass
    return finish("random", evaluator, {"proposal": proposal.to_dict()} if proposal.sparse else None)
