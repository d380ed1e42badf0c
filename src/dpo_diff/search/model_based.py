"""Model-based search (``tpe``): optuna's Tree-structured Parzen Estimator over one categorical choice per slot.

TPE (Bergstra et al. 2011; optuna's :class:`~optuna.samplers.TPESampler`, multivariate, with the constant liar for
batches) models which options of which slots go with good scores and proposes candidates where that model expects
the best. Trials are asked and told in batches (ask-and-tell), so evaluations stay batched like every other
search's. With a cheaper rung in ``ladder`` (:mod:`dpo_diff.fidelity`), each batch is first scored there and only
its best ``keep`` share is promoted to the full sampler (successive halving within the batch, the BOHB idea); the
others are told to TPE as pruned, with their preview score as their last intermediate value. Only full evaluations
compete for the answer. Everything is seeded from the root seed; budget accounting is the evaluator's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from dpo_diff.fidelity import parse_ladder
from dpo_diff.problem import Problem
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.proposal import UNIFORM, Proposal
from dpo_diff.seeding import derive_seed
from dpo_diff.seeding import rng as make_rng
from dpo_diff.space import Candidate

MAX_REDRAWS = 50  # proposals per batch that TPE repeats (already scored) before the batch is topped up uniformly


@dataclass(frozen=True)
class TPEConfig:
    """``tpe`` settings: trials per batch, uniform start-up trials, the ladder (``("full",)``: no previews) and the
    share of each batch promoted past a cheaper rung."""

    batch: int = 8
    startup: int = 10
    ladder: tuple[str, ...] = ("steps:10%", "full")  # BOHB-style: previews are cheap and inform the model too
    keep: float = 0.34

    def __post_init__(self) -> None:
        ladder = tuple(str(s) for s in (self.ladder.split(",") if isinstance(self.ladder, str) else self.ladder))
        object.__setattr__(self, "ladder", ladder)
        if len(parse_ladder(ladder, steps=100)) > 2:
            raise ValueError(f"tpe takes at most one cheap rung before full, got ladder {list(ladder)}")
        if self.batch < 1 or self.startup < 0:
            raise ValueError(f"need batch >= 1 and startup >= 0, got batch={self.batch}, startup={self.startup}")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ladder"] = list(self.ladder)
        return d


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """optuna logs every trial at INFO; lower its logger for the search only, then restore what the user had."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def tpe_search(problem: Problem, evaluator: Evaluator, config: TPEConfig | None = None, *,
               seed: int = 0, proposal: Proposal = UNIFORM) -> SearchResult:
    """TPE; with a sparse ``proposal`` its start-up trials (uniform under the paper's settings) are sparse edits of
    the user prompt, enqueued before the model takes over, the model's suggestions are projected onto the prior's
    number of changes (:meth:`~dpo_diff.search.proposal.Proposal.sparsify`), and top-ups are drawn by the proposal."""
    import optuna

    config = config or TPEConfig()
    rungs = [evaluator.fidelity(f) for f in parse_ladder(config.ladder, problem.sampling.steps)]
    rungs = list(dict.fromkeys(rungs))
    sizes = problem.space.sizes
    dists = {f"slot{i}": optuna.distributions.CategoricalDistribution(tuple(range(n)))
             for i, n in enumerate(sizes) if n > 1}
    sampler = optuna.samplers.TPESampler(seed=derive_seed(seed, "tpe") % 2**32, n_startup_trials=config.startup,
                                         multivariate=True, constant_liar=True)
    rng = make_rng(seed, "tpe-topup")
    with _quiet_optuna():
        study = optuna.create_study(direction="minimize", sampler=sampler)
        if proposal.sparse:
            for c in proposal.distinct(sizes, config.startup, rng):
                study.enqueue_trial(_params(c, sizes))
        barren = 0  # consecutive batches the meaning constraint rejected entirely
        try:
            while barren < 20:
                got = run_batch(study, dists, sizes, evaluator, rungs, config, rng, proposal)
                if got is None:
                    break  # every candidate has been scored
                barren = 0 if got else barren + 1
        except BudgetExhausted:
            pass
    extra = {"ladder": [f.name for f in rungs], "trials": len(study.trials)}
    return finish("tpe", evaluator, {**extra, "proposal": proposal.to_dict()} if proposal.sparse else extra)


def _candidate(params: dict, sizes) -> Candidate:
    return tuple(int(params.get(f"slot{i}", 0)) for i in range(len(sizes)))


def _params(candidate: Candidate, sizes) -> dict:
    return {f"slot{i}": int(c) for i, (c, n) in enumerate(zip(candidate, sizes)) if n > 1}


def propose(study, dists, sizes, evaluator: Evaluator, n: int, rng,
            proposal: Proposal = UNIFORM) -> list[tuple[object, Candidate]]:
    """``n`` trials with candidates nobody scored yet. A repeat of a scored candidate is told its known score (free)
    and replaced; after :data:`MAX_REDRAWS` repeats the batch is topped up with unseen candidates of ``proposal``."""
    out: list[tuple[object, Candidate]] = []
    repeats = 0
    while len(out) < n:
        taken = {c for _, c in out}
        if repeats >= MAX_REDRAWS:
            seen = set(evaluator.evaluations) | set(evaluator.rejected) | taken
            fresh = proposal.distinct(sizes, n - len(out), rng, exclude=seen)
            if not fresh:
                break
            for c in fresh:
                study.enqueue_trial(_params(c, sizes))
                out.append((study.ask(dists), c))
            break
        trial = study.ask(dists)
        c = _candidate(trial.params, sizes)
        projected = proposal.sparsify(c, rng)
        if projected != c:
            # The prior decides how many changes: TPE's suggestion is dropped (told as failed, which TPE ignores)
            # and its sparse projection asked in its place, so the model learns from what is really scored.
            c = projected
            study.tell(trial, state=optuna_state("FAIL"))
            study.enqueue_trial(_params(c, sizes))
            trial = study.ask(dists)
        known = evaluator.evaluations.get(c)
        if known is not None or c in evaluator.rejected or c in taken:
            repeats += 1
            if known is not None:
                study.tell(trial, known.objective)
            else:
                study.tell(trial, state=optuna_state("FAIL"))
            continue
        out.append((trial, c))
    return out


def optuna_state(name: str):
    import optuna

    return getattr(optuna.trial.TrialState, name)


def run_batch(study, dists, sizes, evaluator: Evaluator, rungs, config: TPEConfig, rng,
              proposal: Proposal = UNIFORM) -> int | None:
    """Ask a batch, score it (previews first if the ladder has a cheap rung), tell TPE; returns how many were
    scored in full (``None``: no unseen candidate is left)."""
    full = rungs[-1]
    unit = config.batch * sum(evaluator.cost_of(f) * (1 if i == 0 else config.keep) for i, f in enumerate(rungs))
    n = config.batch if evaluator.remaining >= unit else max(1, int(config.batch * evaluator.remaining / unit))
    trials = propose(study, dists, sizes, evaluator, n, rng, proposal)
    if not trials:
        return None
    cands = [c for _, c in trials]
    if len(rungs) == 2:
        looks = evaluator.evaluate(cands, source="tpe-screen", fidelity=rungs[0])
        scored = [(t, c, e) for (t, c), e in zip(trials, looks) if e is not None]
        for t, _, e in scored:
            t.report(e.objective, step=0)
        scored.sort(key=lambda x: x[2].objective)
        n_keep = max(1, math.ceil(config.keep * len(scored)))
        for t, _, _ in scored[n_keep:]:
            study.tell(t, state=optuna_state("PRUNED"))
        for t, c in trials:
            if c in evaluator.rejected:
                study.tell(t, state=optuna_state("FAIL"))
        trials = [(t, c) for t, c, _ in scored[:n_keep]]
        cands = [c for _, c in trials]
    try:
        results = evaluator.evaluate(cands, source="tpe", fidelity=full)
    finally:  # told even when the budget ran out mid-batch, so the study never holds a running trial
        for t, c in trials:
            e = evaluator.evaluations.get(c)
            if e is not None:
                study.tell(t, e.objective)
            elif c in evaluator.rejected:
                study.tell(t, state=optuna_state("FAIL"))
    return sum(r is not None for r in results)
