"""Hybrid search (the paper's best): GPO learns a distribution, then EPO starts from samples of it.

The reference implementation meant to do this but seeded evolution uniformly at random (it read the explore rate
from the wrong place); here the first population is drawn from the learned softmax(logits), the argmax first.

The hybrid adapts to the budget: GPO spends at most its ``budget_share`` (robust preset), so evolution always runs;
when that share cannot pay for ``min_iterations`` gradient steps, GPO is skipped and the hybrid runs EPO from a
uniform first population drawn as random search draws (at such budgets evolution cannot get past that population,
so the hybrid equals random search), and the record says so.
"""

from __future__ import annotations

from dpo_diff.problem import Problem
from dpo_diff.search.base import Evaluator, SearchResult, finish
from dpo_diff.search.evolution import EvolutionSearchConfig, evolve
from dpo_diff.search.gradient import GradientSearchConfig, gpo_extra, sample_learned, train_mixture
from dpo_diff.search.proposal import UNIFORM, Proposal
from dpo_diff.seeding import rng as make_rng


def hybrid_search(problem: Problem, evaluator: Evaluator, gpo: GradientSearchConfig | None = None,
                  epo: EvolutionSearchConfig | None = None, *, seed: int = 0, on_iteration=None,
                  resume=None, proposal: Proposal = UNIFORM) -> SearchResult:
    """GPO, then EPO from the learned distribution; ``proposal`` mutates and tops up (and draws the first
    population when GPO is skipped)."""
    gpo, epo = gpo or GradientSearchConfig(), epo or EvolutionSearchConfig()
    state = train_mixture(problem, evaluator, gpo, seed, on_iteration, resume)
    if state.skipped:
        # Too small a budget to learn: EPO from a first population drawn from random search's own stream.
        # Below one population (every budget GPO skips at with the defaults) EPO evaluates only that population,
        # in random search's order, so the hybrid ties random search exactly instead of a coin flip.
        rng = make_rng(seed, "random")
        first = proposal.distinct(problem.space.sizes, epo.population_size, rng)
        evolve(problem, evaluator, epo, rng, first, proposal)
        extra = gpo_extra(state)
        extra["gpo_skipped"] += (f"; the hybrid ran EPO from a {proposal.kind} first population (random search's "
                                 "draws; below one population it is random search)")
        return finish("hybrid", evaluator, extra)
    rng = make_rng(seed, "epo")
    init = sample_learned(state, epo.population_size, seed)
    if len(init) < epo.population_size:  # a peaked distribution over a tiny space: top up uniformly
        init += proposal.distinct(problem.space.sizes, epo.population_size - len(init), rng, exclude=set(init))
    evolve(problem, evaluator, epo, rng, init, proposal)
    return finish("hybrid", evaluator, {**gpo_extra(state), "initial_population": [list(c) for c in init]})
