"""Multi-fidelity search (``mf``): many cheap looks, full evaluations for the promising (successive halving).

Hyperparameter optimization's answer to expensive objectives (successive halving, Hyperband) applied to prompts:
draw many distinct candidates uniformly, score them at the cheapest rung of a fidelity ladder
(:mod:`dpo_diff.fidelity`: the no-grad shortcut loss, a few-step generation, fewer seeds), promote the best up the
ladder, and spend the top rung on the full sampler, whose scores alone compete for the answer (then the usual
seed-robust re-ranking, :mod:`dpo_diff.search.selection`).

The budget (full-generation equivalents, charged by :meth:`~dpo_diff.search.base.Evaluator.cost_of`) is split
between rungs by ``screen_share`` (the cheapest rung) and equally among the others, and spent in ``rounds``: each
round screens fresh candidates and promotes the best not yet promoted *over all rounds so far*, so a full evaluation
exists early (anytime) and later rounds can still promote an earlier near-miss. Whatever the rounds leave is spent
on full evaluations of the next-best previews. Below ``min_screen`` affordable looks it is random search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dpo_diff.fidelity import Fidelity, parse_ladder
from dpo_diff.problem import Problem
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.proposal import UNIFORM, Proposal
from dpo_diff.search.random_search import random_search
from dpo_diff.seeding import rng as make_rng
from dpo_diff.space import Candidate

DEFAULT_LADDER = ("steps:20%", "full")
"""Chosen on development prompts (``benchmarks/fidelity.py``, ``docs/fidelity.md``): few-step generations rank
candidates better than the no-grad shortcut loss at every cost; 20% of the steps kept 95% of the best quarter."""


@dataclass(frozen=True)
class MultiFidelityConfig:
    """``mf`` settings: the ladder (cheapest first, ending at ``full``; levels may be shares of the steps), the
    budget share of the cheapest rung, the number of rounds (anytime) and the preview batch (progress is saved
    between batches)."""

    ladder: tuple[str, ...] = DEFAULT_LADDER
    screen_share: float = 0.5
    rounds: int = 3
    chunk: int = 32
    min_screen: int = 8

    def __post_init__(self) -> None:
        ladder = tuple(str(s) for s in (self.ladder.split(",") if isinstance(self.ladder, str) else self.ladder))
        object.__setattr__(self, "ladder", ladder)
        parse_ladder(ladder, steps=100)  # the syntax and order, before any model runs
        if not 0 < self.screen_share < 1:
            raise ValueError(f"screen_share must be in (0, 1), got {self.screen_share}")
        for name in ("rounds", "chunk", "min_screen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ladder"] = list(self.ladder)
        return d


def multi_fidelity_search(problem: Problem, evaluator: Evaluator, config: MultiFidelityConfig | None = None, *,
                          seed: int = 0, proposal: Proposal = UNIFORM) -> SearchResult:
    config = config or MultiFidelityConfig()
    rungs = [evaluator.fidelity(f) for f in parse_ladder(config.ladder, problem.sampling.steps)]
    rungs = list(dict.fromkeys(rungs))  # a rung that normalises to another (steps:N at full steps) is one rung
    costs = [evaluator.cost_of(f) for f in rungs]
    budget = evaluator.remaining
    extra = {"ladder": [f.name for f in rungs], "rung_costs": costs}
    if len(rungs) == 1 or budget * config.screen_share < config.min_screen * costs[0] or budget < 2 * costs[-1]:
        extra["mf_skipped"] = (f"budget {budget:g} affords fewer than {config.min_screen} looks at {rungs[0].name} "
                               f"or two full evaluations: random search instead")
        result = random_search(problem, evaluator, seed=seed, proposal=proposal)
        result.method, result.extra = "mf", {**result.extra, **extra}
        return result
    shares = [config.screen_share] + [(1 - config.screen_share) / (len(rungs) - 1)] * (len(rungs) - 1)
    rng = make_rng(seed, "mf")
    rounds = max(1, min(config.rounds, int(shares[-1] * budget // costs[-1])))
    # Promotions go in sampler-sized batches: a time budget or a cancel is checked between them, and full
    # evaluations batch exactly as every other search's do.
    step = max(1, getattr(getattr(problem, "sampling", None), "batch_size", 8))
    try:
        for _ in range(rounds):
            for i, fid in enumerate(rungs):
                n = int((shares[i] * budget / rounds + 1e-9) // costs[i])
                if i == len(rungs) - 1:
                    n = max(n, 1)  # every round ends with a full evaluation: the best-so-far is real early
                if i == 0:
                    screen(problem, evaluator, fid, n, rng, config.chunk, proposal)
                else:
                    promote(evaluator, rungs[i - 1], fid, n, step if fid.is_full else config.chunk)
        while True:  # the rest of the budget: full evaluations of the next-best previews, then random ones;
            # every affordable promotion at once, in sampler-sized batches (not one model call per candidate)
            n = max(1, int(evaluator.remaining / costs[-1] + 1e-9))
            if not promote(evaluator, rungs[-2], rungs[-1], n, step):
                random_search(problem, evaluator, seed=seed, proposal=proposal)
                break
    except BudgetExhausted:
        pass
    extra["rounds"] = rounds
    if proposal.sparse:
        extra["proposal"] = proposal.to_dict()
    extra["looks"] = {f.name: sum(1 for k in evaluator.previews if k[1] == f.name) for f in rungs[:-1]}
    return finish("mf", evaluator, extra)


def screen(problem: Problem, evaluator: Evaluator, fid: Fidelity, n: int, rng, chunk: int,
           proposal: Proposal = UNIFORM) -> int:
    """Score ``n`` fresh candidates drawn by ``proposal`` at the cheapest rung (rejected ones are replaced);
    returns how many."""
    done, barren = 0, 0
    while done < n and barren < 20:
        seen = {c for c, name in evaluator.previews if name == fid.name} | set(evaluator.rejected)
        cands = proposal.distinct(problem.space.sizes, min(chunk, n - done), rng, exclude=seen)
        if not cands:
            break  # the whole space has been screened
        got = sum(e is not None for e in evaluator.evaluate(cands, source="screen", fidelity=fid))
        done += got
        barren = 0 if got else barren + 1
    return done


def promote(evaluator: Evaluator, lower: Fidelity, upper: Fidelity, n: int, chunk: int) -> int:
    """Score at ``upper`` the ``n`` best candidates at ``lower`` not yet scored there; returns how many."""
    scored_upper = (set(evaluator.evaluations) if upper.is_full
                    else {c for c, name in evaluator.previews if name == upper.name})
    ranked = sorted((e for (c, name), e in evaluator.previews.items() if name == lower.name
                     and c not in scored_upper), key=lambda e: e.objective)
    todo: list[Candidate] = [e.candidate for e in ranked[:n]]
    for i in range(0, len(todo), chunk):
        evaluator.evaluate(todo[i : i + chunk], source=f"promoted from {lower.name}", fidelity=upper)
    return len(todo)
