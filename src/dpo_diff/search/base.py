"""Budget accounting and results shared by every search (GPO, EPO, hybrid, random).

Cost is counted in one place, :class:`Evaluator`, in *full-generation equivalents*: one full sampler run for one
seed costs 1, so evaluating a candidate on S search seeds costs S; a shortcut-gradient (GPO) iteration costs
``(k + K) / steps`` per seed (the no-grad prefix plus the grad-enabled UNet calls), and a look at a cheaper
fidelity (:mod:`dpo_diff.fidelity`: a few-step generation, the no-grad shortcut loss, fewer seeds) costs what
:meth:`~dpo_diff.fidelity.Fidelity.cost` says. A candidate is never evaluated twice at one fidelity, and candidates
rejected by the meaning constraint cost nothing. Only full-fidelity evaluations compete for the best answer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpo_diff.fidelity import FULL, Fidelity
from dpo_diff.problem import Problem
from dpo_diff.space import Candidate


class BudgetExhausted(Exception):
    """Raised inside a search when the next evaluation would exceed the budget; the search then stops."""


class NothingToSearch(ValueError):
    """The space offers no alternative to the user prompt."""


@dataclass
class Evaluation:
    candidate: Candidate
    prompt: str
    negative_prompt: str
    losses: list[float]  # spherical CLIP loss per search seed
    objective: float  # task-signed mean loss (lower is better for every task)
    cost: float  # cumulative cost after this evaluation
    source: str = ""  # which search step produced it ("init", "mutation", "gpo-sample", ...)
    fidelity: str = "full"  # how it was scored (dpo_diff.fidelity): only "full" competes for the answer

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": list(self.candidate), "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "losses": self.losses, "objective": self.objective, "cost": self.cost, "source": self.source,
                "fidelity": self.fidelity}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        return cls(tuple(d["candidate"]), d["prompt"], d["negative_prompt"], list(d["losses"]), d["objective"],
                   d["cost"], d.get("source", ""), d.get("fidelity", "full"))

    @property
    def key(self) -> Candidate | tuple[Candidate, str]:
        """Where it is kept: the candidate for a full evaluation, ``(candidate, fidelity)`` for a preview."""
        return preview_key(self.candidate, self.fidelity)


def preview_key(candidate: Candidate, fidelity: str) -> Candidate | tuple[Candidate, str]:
    return tuple(candidate) if fidelity == "full" else (tuple(candidate), fidelity)


@dataclass
class Evaluator:
    """Evaluates candidates on the search seeds under a budget, caching results and logging the history.

    Args:
        problem: what to evaluate.
        seeds: image seeds used during the search (report seeds are held out elsewhere).
        budget: total cost allowed, in full-generation equivalents.
        on_evaluation: called after each new evaluation (used to write progress to disk).
        preloaded: evaluations restored from a previous run (``--resume``), keyed by :attr:`Evaluation.key`.
            They are not generated again, but their cost is charged when the search asks for them, so a resumed run
            follows exactly the same path and budget as an uninterrupted one (previews included).
        time_budget: optional wall-clock limit in seconds (``bench --time-budget``): once spent, nothing more is
            afforded, so methods can be compared at equal time on one machine as well as at equal cost.
        should_stop: optional cancellation check (e.g. a ``threading.Event``'s ``is_set`` from a UI's cancel
            button), asked between evaluations: once true, nothing more is afforded, as when ``time_budget`` is
            spent, and the search returns its best so far.

    ``timings`` accumulates wall-clock seconds per phase (``gpo_gradient``: GPO forward and backward passes,
    ``evaluation``: exact full-sampler scoring) beside the cost in full-generation equivalents.
    """

    problem: Problem
    seeds: tuple[int, ...]
    budget: float
    on_evaluation: Callable[[Evaluation], None] | None = None
    preloaded: dict[Any, Evaluation] = field(default_factory=dict)
    cost: float = 0.0
    evaluations: dict[Candidate, Evaluation] = field(default_factory=dict)
    previews: dict[tuple[Candidate, str], Evaluation] = field(default_factory=dict)  # (candidate, fidelity) -> score
    rejected: dict[Candidate, str] = field(default_factory=dict)
    approved: set[Candidate] = field(default_factory=set)  # passed the meaning constraint (not asked again)
    history: list[tuple[float, float]] = field(default_factory=list)  # (cost, best objective so far)
    started: float = field(default_factory=time.perf_counter)
    time_budget: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        if not self.budget > 0 or not math.isfinite(self.budget):
            raise ValueError(f"budget must be a positive number of full generations, got {self.budget}")
        if self.budget < len(self.seeds):
            raise ValueError(
                f"budget {self.budget} is smaller than one evaluation ({len(self.seeds)} seeds = {len(self.seeds)} "
                f"full generations); raise --budget or use fewer --seeds"
            )

    @property
    def remaining(self) -> float:
        return self.budget - self.cost

    @property
    def evaluation_cost(self) -> float:
        """The cost of one full evaluation: one generation per search seed."""
        return float(len(self.seeds))

    def fidelity(self, spec: Fidelity | str) -> Fidelity:
        """``spec`` checked against the problem and with settings that change nothing dropped (full steps: full)."""
        steps = self.problem.sampling.steps
        fid = Fidelity.parse(spec, steps).normalized(steps, len(self.seeds))
        fid.check(steps)
        return fid

    def cost_of(self, fidelity: Fidelity | str = FULL) -> float:
        """Full-generation equivalents of one candidate at ``fidelity`` (the one rule, :meth:`Fidelity.cost`)."""
        fid = self.fidelity(fidelity)
        if fid.is_full:
            return self.evaluation_cost
        calls = getattr(self.problem, "calls_for", None) or (lambda n: n or self.problem.sampling.steps)
        return fid.cost(calls, len(self.seeds))

    @property
    def cancelled(self) -> bool:
        """``should_stop`` asked the search to stop."""
        return self.should_stop is not None and bool(self.should_stop())

    @property
    def out_of_time(self) -> bool:
        """The wall-clock budget is spent or the search was cancelled (never before a first evaluation: a search
        always returns an answer)."""
        if not self.evaluations:
            return False
        return self.cancelled or (self.time_budget is not None
                                  and time.perf_counter() - self.started >= self.time_budget)

    def can_afford(self, cost: float) -> bool:
        return cost <= self.remaining + 1e-9 and not self.out_of_time

    def charge(self, cost: float) -> None:
        """Spend ``cost`` (GPO iterations, already computed) or raise :class:`BudgetExhausted`."""
        if cost > self.remaining + 1e-9:
            raise BudgetExhausted
        self.cost += cost
        self._record_history()

    @property
    def best(self) -> Evaluation | None:
        return min(self.evaluations.values(), key=lambda e: e.objective, default=None)

    def _record_history(self) -> None:
        best = self.best
        self.history.append((self.cost, best.objective if best else float("nan")))

    def accepted(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Filter by the meaning constraint (free of cost); remembers rejections."""
        if self.problem.constraint is None:
            return list(candidates)
        todo = [c for c in dict.fromkeys(candidates) if c not in self.rejected and c not in self.approved]
        if todo:
            prompts = [self.problem.render(c).prompt for c in todo]
            for c, ok in zip(todo, self.problem.constraint(self.problem.user_prompt, prompts)):
                if ok:
                    self.approved.add(c)
                else:
                    self.rejected[c] = self.problem.render(c).prompt
        return [c for c in candidates if c not in self.rejected]

    def evaluate(self, candidates: Sequence[Candidate], source: str = "",
                 fidelity: Fidelity | str = FULL) -> list[Evaluation | None]:
        """Evaluate (or look up) candidates at ``fidelity``, in order. New ones are charged; rejected ones give
        ``None``. Previews (any fidelity but ``full``) are kept in :attr:`previews` and never become the answer.

        Evaluates as many new candidates as the budget allows (in one batch), then raises
        :class:`BudgetExhausted` if some could not be afforded.
        """
        fid = self.fidelity(fidelity)
        store = self.evaluations if fid.is_full else self.previews
        key = (lambda c: c) if fid.is_full else (lambda c: (c, fid.name))
        ok = set(self.accepted(candidates))
        new = [c for c in dict.fromkeys(candidates) if c in ok and key(c) not in store]
        unit = self.cost_of(fid)
        affordable = 0 if self.out_of_time else int((self.remaining + 1e-9) // unit)
        run, short = new[:affordable], len(new) > affordable
        fresh = [c for c in run if key(c) not in self.preloaded]
        results = {}
        if fresh:
            t0 = time.perf_counter()
            # Full evaluations keep the two-argument call, so any problem-like object (a test's spy) still works.
            losses = (self.problem.candidate_losses(fresh, self.seeds) if fid.is_full
                      else self.problem.candidate_losses(fresh, self.seeds, fid))
            results = {c: [float(x) for x in row] for c, row in zip(fresh, losses)}
            phase = "evaluation" if fid.is_full else "preview"
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0
        for c in run:
            row = results[c] if c in results else self.preloaded[key(c)].losses
            pair = self.problem.render(c)
            self.cost += unit
            ev = Evaluation(c, pair.prompt, pair.negative_prompt, row,
                            float(self.problem.task.objective(sum(row) / len(row))), self.cost, source, fid.name)
            store[key(c)] = ev
            self._record_history()
            if self.on_evaluation:
                self.on_evaluation(ev)
        if short:
            raise BudgetExhausted
        return [store.get(key(c)) for c in candidates]


@dataclass
class SearchResult:
    """Outcome of a search: the best candidate, every evaluation, the cost curve and timing."""

    method: str
    best: Evaluation
    evaluations: list[Evaluation]
    history: list[tuple[float, float]]
    cost: float
    budget: float
    wall_time: float
    rejected: dict[Candidate, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    previews: list[Evaluation] = field(default_factory=list)  # scores at cheaper fidelities (dpo_diff.fidelity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "best": self.best.to_dict(),
            "cost": self.cost,
            "budget": self.budget,
            "wall_time": self.wall_time,
            "timings": self.timings,
            "history": [list(h) for h in self.history],
            "evaluations": [e.to_dict() for e in self.evaluations],
            "previews": [e.to_dict() for e in self.previews],
            "rejected": [{"candidate": list(c), "prompt": p} for c, p in self.rejected.items()],
            "extra": self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def finish(method: str, ev: Evaluator, extra: dict[str, Any] | None = None) -> SearchResult:
    """Package an evaluator's state into a :class:`SearchResult` (raises if nothing was evaluated)."""
    best = ev.best
    if best is None:
        if ev.rejected:
            tried = list(ev.rejected.values())[:5]
            raise ValueError(
                f"every candidate tried ({len(ev.rejected)}) was rejected by the meaning constraint, e.g. {tried}; "
                f"lower the similarity threshold or add closer substitutes"
            )
        raise ValueError(f"no candidate could be evaluated within the budget {ev.budget}")
    return SearchResult(method, best, list(ev.evaluations.values()), list(ev.history), ev.cost, ev.budget,
                        time.perf_counter() - ev.started, dict(ev.rejected), extra or {}, dict(ev.timings),
                        list(ev.previews.values()))
