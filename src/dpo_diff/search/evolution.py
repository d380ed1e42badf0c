"""Evolutionary prompt optimization (the paper's EPO) and its population operators.

Genome: one option index per slot. Each generation keeps an elitist archive of the best ``archive_size``
candidates, takes the top ``num_parents`` as parents, and proposes ``num_mutants`` mutants (each gene resampled with
probability ``mutation_prob``) and ``num_crossovers`` uniform crossovers; defaults are the paper's (population 20,
10 parents, 10 mutants with p = 0.1, 10 crossovers). Offspring already evaluated or rejected are re-drawn, never
re-evaluated. All randomness comes from one ``random.Random`` derived from the run seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dpo_diff.problem import Problem
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.proposal import UNIFORM, Proposal
from dpo_diff.seeding import rng as make_rng
from dpo_diff.space import Candidate

MAX_BARREN_GENERATIONS = 20  # stop when the meaning constraint rejects everything this many times in a row


@dataclass(frozen=True)
class EvolutionSearchConfig:
    """EPO settings (defaults: the paper's)."""

    population_size: int = 20
    num_parents: int = 10
    num_mutants: int = 10
    num_crossovers: int = 10
    mutation_prob: float = 0.1
    archive_size: int = 20
    max_redraws: int = 50  # attempts to find an unseen offspring before giving up on it

    def __post_init__(self) -> None:
        for name in ("population_size", "num_parents", "archive_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_mutants < 0 or self.num_crossovers < 0 or self.num_mutants + self.num_crossovers == 0:
            raise ValueError("need num_mutants >= 0, num_crossovers >= 0 and at least one offspring per generation")
        if not 0 < self.mutation_prob <= 1:
            raise ValueError(f"mutation_prob must be in (0, 1], got {self.mutation_prob}")

    def to_dict(self) -> dict:
        return asdict(self)


def mutate(parent: Candidate, sizes: Sequence[int], p: float, rng: random.Random) -> Candidate:
    """The paper's mutation: resample each gene with probability ``p`` to a *different* option (at least one)."""
    return UNIFORM.mutate(parent, sizes, p, rng)


def crossover(a: Candidate, b: Candidate, rng: random.Random) -> Candidate:
    """Uniform crossover: each gene from either parent with probability 1/2."""
    return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))


class _Seen:
    def __init__(self, ev: Evaluator) -> None:
        self.ev = ev

    def __contains__(self, c: Candidate) -> bool:
        return c in self.ev.evaluations or c in self.ev.rejected


def evolve(problem: Problem, evaluator: Evaluator, config: EvolutionSearchConfig, rng: random.Random,
           initial: Sequence[Candidate], proposal: Proposal = UNIFORM) -> None:
    """Run EPO generations from ``initial`` until the budget is spent or no unseen offspring can be found;
    ``proposal`` draws fresh populations and mutates (sparse: one added, dropped or swapped change)."""
    sizes = problem.space.sizes
    seen = _Seen(evaluator)
    barren = 0  # consecutive generations whose proposals were all rejected by the constraint
    try:
        evaluator.evaluate(list(dict.fromkeys(initial)), source="init")
        while barren < MAX_BARREN_GENERATIONS:
            ranked = sorted(evaluator.evaluations.values(), key=lambda e: e.objective)[: config.archive_size]
            parents = [e.candidate for e in ranked[: config.num_parents]]
            if not parents:  # the whole population was rejected: draw a fresh one
                before = len(evaluator.rejected)
                fresh = proposal.distinct(sizes, config.population_size, rng, exclude=set(evaluator.rejected))
                if not fresh:
                    break
                evaluator.evaluate(fresh, source="init")
                barren += len(evaluator.rejected) > before and not evaluator.evaluations
                continue
            children: list[Candidate] = []

            def propose(make) -> None:
                for _ in range(config.max_redraws):
                    c = make()
                    if c not in seen and c not in children:
                        children.append(c)
                        return

            for _ in range(config.num_mutants):
                propose(lambda: proposal.mutate(rng.choice(parents), sizes, config.mutation_prob, rng))
            for _ in range(config.num_crossovers):
                if len(parents) >= 2:
                    propose(lambda: crossover(*rng.sample(parents, 2), rng))
            if not children:
                break  # the neighbourhood of the archive is exhausted (small spaces)
            n = len(evaluator.evaluations)
            evaluator.evaluate(children, source="offspring")
            barren = barren + 1 if len(evaluator.evaluations) == n else 0
    except BudgetExhausted:
        pass


def evolution_search(problem: Problem, evaluator: Evaluator, config: EvolutionSearchConfig | None = None, *,
                     seed: int = 0, proposal: Proposal = UNIFORM) -> SearchResult:
    """EPO from an initial population of distinct candidates drawn by ``proposal`` (the paper's: uniform)."""
    config = config or EvolutionSearchConfig()
    rng = make_rng(seed, "epo")
    init = proposal.distinct(problem.space.sizes, config.population_size, rng)
    evolve(problem, evaluator, config, rng, init, proposal)
    return finish("epo", evaluator, {"proposal": proposal.to_dict()} if proposal.sparse else None)


def distinct_random(sizes: Sequence[int], n: int, rng: random.Random, exclude=frozenset()) -> list[Candidate]:
    """Up to ``n`` distinct uniform random candidates not in ``exclude``."""
    return UNIFORM.distinct(sizes, n, rng, exclude)
