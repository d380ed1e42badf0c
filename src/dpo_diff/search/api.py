"""One entry point for every search: ``search(problem, method=..., budget=..., seeds=..., seed=...)``.

Methods (all at the same, honestly counted budget, see :mod:`dpo_diff.search.base`):

* ``hybrid`` (the paper's best): GPO, then EPO seeded from the learned distribution.
* ``gpo``: shortcut-gradient training, then samples from the learned distribution (GPO-sampling).
* ``epo``: evolutionary search from a uniform population.
* ``random`` (:func:`search`'s default, :data:`dpo_diff.search.BASELINE_METHOD`): uniform random search, the
  baseline. The commands (optimize, demo, the web app) take the task's default instead
  (:data:`dpo_diff.search.TASK_DEFAULTS`).
* ``mf``: multi-fidelity successive halving: many cheap looks (the no-grad shortcut loss, few-step generations),
  full evaluations for the best (:mod:`dpo_diff.search.multi_fidelity`).
* ``tpe``: optuna's Tree-structured Parzen Estimator, optionally with a cheap rung
  (:mod:`dpo_diff.search.model_based`).
* ``greedy``: sparse-first: every single edit, then the best combined (greedy, or beam search with
  ``GreedyConfig(beam=B)``; :mod:`dpo_diff.search.greedy`).
* ``llm``: an OpenAI-compatible chat model proposes candidates from the scored history (OPT2I-style;
  :mod:`dpo_diff.search.llm_search`; needs ``llm=LLMSearchConfig(model=...)``).

``proposal`` (:mod:`dpo_diff.search.proposal`) says how random, epo, hybrid's EPO, tpe and mf draw candidates:
uniform over the product space (the paper's) or sparse edits of the user prompt.

Whatever the method, a space whose every candidate fits the budget is enumerated (nothing is left to chance), and
with a :class:`~dpo_diff.search.selection.SelectionConfig` the best candidates are re-ranked on validation seeds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dpo_diff.search import BASELINE_METHOD, METHODS
from dpo_diff.search.base import BudgetExhausted, Evaluation, Evaluator, NothingToSearch, SearchResult, finish
from dpo_diff.search.cost import generation_calls
from dpo_diff.search.evolution import EvolutionSearchConfig, evolution_search
from dpo_diff.search.gradient import GradientSearchConfig, GradientState, gpo_shortfall, gradient_search
from dpo_diff.search.greedy import GreedyConfig, greedy_search
from dpo_diff.search.hybrid import hybrid_search
from dpo_diff.search.llm_search import LLMSearchConfig, llm_search
from dpo_diff.search.model_based import TPEConfig, tpe_search
from dpo_diff.search.multi_fidelity import MultiFidelityConfig, multi_fidelity_search
from dpo_diff.search.proposal import UNIFORM, Proposal
from dpo_diff.search.random_search import random_search
from dpo_diff.search.selection import SelectionConfig, normalised_select_judges, rerank, user_evaluation

__all__ = ["METHODS", "search"]


def search(problem, *, method: str = BASELINE_METHOD, budget: float = 40.0, seeds: Sequence[int] = (0,), seed: int = 0,
           gpo: GradientSearchConfig | None = None, epo: EvolutionSearchConfig | None = None,
           selection: SelectionConfig | None = None, mf: MultiFidelityConfig | None = None,
           tpe: TPEConfig | None = None, llm: LLMSearchConfig | None = None,
           greedy: GreedyConfig | None = None, proposal: Proposal | None = None,
           on_evaluation: Callable[[Evaluation], None] | None = None,
           on_iteration: Callable[[GradientState], None] | None = None,
           preloaded: dict | None = None, gpo_resume: dict[str, Any] | None = None,
           time_budget: float | None = None, should_stop: Callable[[], bool] | None = None,
           select_judges: Mapping[str, Any] | None = None) -> SearchResult:
    """Search ``problem.space`` for the candidate minimising the task objective within ``budget``.

    Args:
        problem: a :class:`~dpo_diff.problem.Problem` (or any object with the same interface, e.g.
            :class:`dpo_diff.testing.SyntheticProblem`).
        budget: full-generation equivalents (one full sampler run on one seed = 1), re-ranking included.
        seeds: image seeds the search sees; a candidate evaluation costs ``len(seeds)``.
        seed: root of the search's random streams; the same seed gives the same result.
        selection: re-rank the best candidates on validation seeds (budget reserved up front).
        mf, tpe, greedy: settings of the multi-fidelity, model-based and greedy searches (defaults when ``None``).
        proposal: how the samplers draw candidates (default uniform, the paper's).
        llm: the LLM proposer's endpoint and settings (``method="llm"`` needs its ``model``).
        on_evaluation: called after every new evaluation (to persist progress).
        preloaded: evaluations from an interrupted run, reused without generating again.
        gpo_resume: the GPO checkpoint of an interrupted run (continued exactly instead of re-learned).
        time_budget: optional wall-clock limit in seconds for the search.
        should_stop: cancellation check asked between evaluations; once true the search returns its best so far
            (after at least one evaluation), skips re-ranking and records ``extra["cancelled"] = True``.
        select_judges: the loaded selection judges ``{spec: judge}`` of ``selection.judges`` (required exactly
            when it names some): an answer replaces the user prompt only if every one prefers it on the validation
            seeds (:func:`~dpo_diff.search.selection.judged_rerank`). When all are vetoed, ``result.best`` is the
            user prompt's evaluation (see :func:`~dpo_diff.search.selection.user_evaluation`) and
            ``extra["selection"]["kept_user"]`` is true.

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
    proposal = proposal or UNIFORM
    selection = (selection or SelectionConfig()).resolved(seeds)
    select_judges = matched_select_judges(selection, select_judges)
    top = selection.top_for(budget)
    evaluator = Evaluator(problem, tuple(seeds), selection.search_budget(budget), on_evaluation,
                          dict(preloaded or {}), time_budget=time_budget, should_stop=should_stop)
    if enumerates(problem, evaluator):
        result = enumerate_space(problem, evaluator, method)
    elif method == "gpo":
        result = gradient_search(problem, evaluator, gpo, seed=seed, on_iteration=on_iteration, resume=gpo_resume)
    elif method == "hybrid":
        result = hybrid_search(problem, evaluator, gpo, epo, seed=seed, on_iteration=on_iteration,
                               resume=gpo_resume, proposal=proposal)
    elif method == "epo":
        result = evolution_search(problem, evaluator, epo, seed=seed, proposal=proposal)
    elif method == "mf":
        result = multi_fidelity_search(problem, evaluator, mf, seed=seed, proposal=proposal)
    elif method == "tpe":
        result = tpe_search(problem, evaluator, tpe, seed=seed, proposal=proposal)
    elif method == "greedy":
        result = greedy_search(problem, evaluator, greedy, seed=seed)
    elif method == "llm":
        result = llm_search(problem, evaluator, llm, seed=seed)
    else:
        result = random_search(problem, evaluator, seed=seed, proposal=proposal)
    if evaluator.cancelled:
        result.extra["cancelled"] = True  # re-ranking would spend more after the user said stop
        if selection.judges:  # never silent: the answer was not put to the selection judges
            result.extra["selection"] = skipped_selection(selection, "the search was cancelled")
    elif top:
        apply_selection(result, rerank(problem, evaluator, selection, top, select_judges), evaluator, problem)
    elif selection.active:
        result.extra["selection"] = skipped_selection(selection, f"budget {budget} too small to re-rank within "
                                                      f"{selection.max_share:.0%} of it; the whole budget went to "
                                                      f"the search")
    result.budget = budget
    return result


def enumerates(problem, evaluator: Evaluator) -> bool:
    """Whether every candidate of the space fits the search's budget: then it is enumerated, whatever the method."""
    return problem.space.num_candidates * len(evaluator.seeds) <= evaluator.budget + 1e-9


def planned_gpo_shortfall(problem, *, method: str, budget: float, seeds: Sequence[int],
                          gpo: GradientSearchConfig | None = None,
                          selection: SelectionConfig | None = None) -> int | None:
    """The GPO iterations that :func:`search` with these settings can afford when it will skip ``method``'s GPO
    stage for them (:func:`~dpo_diff.search.gradient.gpo_shortfall`), else ``None`` (GPO runs, the method has no
    GPO stage, or the space is enumerated). Computed as the search computes it, without generating anything, so a
    caller can say so before the run."""
    if method not in ("gpo", "hybrid") or problem.space.is_trivial:
        return None
    selection = (selection or SelectionConfig()).resolved(seeds)
    evaluator = Evaluator(problem, tuple(seeds), selection.search_budget(budget))
    if enumerates(problem, evaluator):
        return None
    return gpo_shortfall(evaluator, gpo or GradientSearchConfig(), generation_calls(problem))


def enumerate_space(problem, evaluator: Evaluator, method: str) -> SearchResult:
    """Every candidate of a space that fits the budget, in order: no method can do better, none is left to luck."""
    everything = list(itertools.product(*(range(n) for n in problem.space.sizes)))
    # In chunks of one sampler batch of candidates: the rows batch exactly as in one call (the same numbers), and
    # progress is saved and a time budget or a cancel takes effect between chunks, not only after the last one.
    step = max(1, getattr(getattr(problem, "sampling", None), "batch_size", 8))
    try:
        for i in range(0, len(everything), step):
            evaluator.evaluate(everything[i : i + step], source="enumeration")
    except BudgetExhausted:
        pass
    return finish(method, evaluator, {"enumerated": True})


def skipped_selection(selection: SelectionConfig, reason: str) -> dict[str, Any]:
    """The record of a re-ranking that did not run, saying so for the selection judges too."""
    unjudged = (f"; the selection judges ({', '.join(selection.judges)}) did not run: the search judge alone "
                f"chose") if selection.judges else ""
    return {"validation_seeds": list(selection.validation_seeds), "cost": 0.0, "candidates": [],
            "skipped": reason + unjudged}


def matched_select_judges(selection: SelectionConfig, select_judges: Mapping[str, Any] | None) -> dict[str, Any]:
    """``select_judges`` keyed by canonical spec, checked against ``selection.judges`` (the same judges, no more)."""
    given = dict(zip(normalised_select_judges(list(select_judges)), select_judges.values())) if select_judges else {}
    if set(given) != set(selection.judges):
        if not selection.judges:
            raise ValueError(f"select_judges {sorted(given)} given, but the selection names no judges; set "
                             f"SelectionConfig(judges=...) to the same specs (with re-ranking on)")
        missing, extra = set(selection.judges) - set(given), set(given) - set(selection.judges)
        parts = ([f"missing {sorted(missing)}"] if missing else []) + ([f"not asked for {sorted(extra)}"] if extra
                                                                        else [])
        raise ValueError(f"the selection judges {list(selection.judges)} need their loaded judges in "
                         f"select_judges={{spec: judge}}: {'; '.join(parts)}")
    return {name: given[name] for name in selection.judges}  # the configured order: the first judge ranks


def apply_selection(result: SearchResult, record: dict[str, Any], evaluator: Evaluator, problem=None) -> None:
    """Make the re-ranked winner the result's best and charge the re-ranking to its cost. When selection judges
    vetoed every candidate (``kept_user``), the best is the user prompt's evaluation (``problem`` needed)."""
    result.extra["selection"] = record
    if record.get("kept_user"):
        result.best = user_evaluation(problem, evaluator, record, result.cost + record["cost"])
    elif record["candidates"]:
        result.best = evaluator.evaluations[tuple(record["candidates"][0]["candidate"])]
    result.cost += record["cost"]
    result.history.append((result.cost, result.history[-1][1] if result.history else float("nan")))
    result.timings = dict(evaluator.timings)
