"""One entry point for every search: ``search(problem, method=..., budget=..., seeds=..., seed=...)``.

Methods (all at the same, honestly counted budget, see :mod:`dpo_diff.search.base`):

* ``hybrid`` (default, the paper's best): GPO, then EPO seeded from the learned distribution.
* ``gpo``: shortcut-gradient training, then samples from the learned distribution (GPO-sampling).
* ``epo``: evolutionary search from a uniform population.
* ``random``: uniform random search, the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dpo_diff.search.base import Evaluation, Evaluator, NothingToSearch, SearchResult
from dpo_diff.search.evolution import EvolutionSearchConfig, evolution_search
from dpo_diff.search.gradient import GradientSearchConfig, GradientState, gradient_search
from dpo_diff.search.hybrid import hybrid_search
from dpo_diff.search.random_search import random_search

METHODS = ("hybrid", "gpo", "epo", "random")


def search(problem, *, method: str = "hybrid", budget: float = 40.0, seeds: Sequence[int] = (0,), seed: int = 0,
           gpo: GradientSearchConfig | None = None, epo: EvolutionSearchConfig | None = None,
           on_evaluation: Callable[[Evaluation], None] | None = None,
           on_iteration: Callable[[GradientState], None] | None = None,
           preloaded: dict | None = None) -> SearchResult:
    """Search ``problem.space`` for the candidate minimising the task objective within ``budget``.

    Args:
        problem: a :class:`~dpo_diff.problem.Problem` (or any object with the same interface, e.g.
            :class:`dpo_diff.testing.SyntheticProblem`).
        budget: full-generation equivalents (one full sampler run on one seed = 1).
        seeds: image seeds the search sees; a candidate evaluation costs ``len(seeds)``.
        seed: root of the search's random streams; the same seed gives the same result.
        on_evaluation: called after every new evaluation (to persist progress).
        preloaded: evaluations from an interrupted run, reused without generating again.

    Raises:
        NothingToSearch: the space has no slot with a second option.
        ValueError: bad budget, or every candidate was rejected by the meaning constraint.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if problem.space.is_trivial:
        raise NothingToSearch(
            f"the search space of {problem.space.prompt!r} has {len(problem.space.slots)} slots and none offers a "
            f"second option: nothing to search"
        )
    evaluator = Evaluator(problem, tuple(seeds), budget, on_evaluation, dict(preloaded or {}))
    if method == "gpo":
        return gradient_search(problem, evaluator, gpo, seed=seed, on_iteration=on_iteration)
    if method == "hybrid":
        return hybrid_search(problem, evaluator, gpo, epo, seed=seed, on_iteration=on_iteration)
    if method == "epo":
        return evolution_search(problem, evaluator, epo, seed=seed)
    return random_search(problem, evaluator, seed=seed)
