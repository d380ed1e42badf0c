"""Sparse-first search (``greedy``): every single edit first, then the best ones combined (greedy or beam).

What the text-attack literature tries first (TextAttack's ``GreedyWordSwapWIR``: rank words by importance, then
swap them in that order while the goal improves; its beam search keeps the best B states), applied to the prompt's
slots: the *word importance* of a change is the loss of the user prompt with only that change made.

1. **Singles.** The user prompt and every single change (each option of each slot alone) on the search seeds, in
   sampler-sized batches, up to ``singles_share`` of the budget. When they do not fit: with ``screen`` (a cheaper
   fidelity, :mod:`dpo_diff.fidelity`) all of them are previewed there and the best promoted to full evaluations;
   otherwise as many as fit are drawn, stratified over slots (every slot gets a look before any gets a second).
2. **Combination.** The ``beam`` best states (singles at first) are each extended by one of the ``expand`` best
   single changes that beat the user prompt, on a slot not yet changed; all extensions of a round go in one batch;
   the beam keeps the best states seen. Rounds stop once a round does not improve the best, at ``max_changes``, or
   when the budget is spent. ``beam=1`` is greedy steepest descent over the best singles.
3. **The rest.** Budget left over goes to the singles not yet scored (then it stays unspent: a greedy answer never
   needs the whole budget). The answer is then re-ranked on validation seeds like every other search's.

Answers are sparse by construction, where the registered records found the ground truth gains most (answers with
1-2 negative terms) and the judge is gamed least. Every step is a batched, budgeted evaluation, so the search
resumes exactly, honours a time budget and a cancel, and skips candidates the meaning constraint rejects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dpo_diff.problem import Problem
from dpo_diff.search.base import BudgetExhausted, Evaluation, Evaluator, SearchResult, finish
from dpo_diff.search.proposal import num_changed
from dpo_diff.seeding import rng as make_rng
from dpo_diff.space import Candidate


@dataclass(frozen=True)
class GreedyConfig:
    """``greedy`` settings: beam width (1: greedy), single changes tried per state and round, the most changes an
    answer may make (0: no limit), the budget share of the singles, and an optional cheaper fidelity to preview the
    singles at when they do not fit (e.g. ``"steps:10%"``; empty: sample them)."""

    beam: int = 1
    expand: int = 4
    max_changes: int = 0
    singles_share: float = 0.75
    screen: str = ""

    def __post_init__(self) -> None:
        for name in ("beam", "expand"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.max_changes, int) or self.max_changes < 0:
            raise ValueError(f"max_changes must be an integer >= 0 (0: no limit), got {self.max_changes!r}")
        if not 0 < self.singles_share <= 1:
            raise ValueError(f"singles_share must be in (0, 1], got {self.singles_share!r}")
        if self.screen:
            from dpo_diff.fidelity import Fidelity

            if Fidelity.parse(self.screen, 100).is_full:
                raise ValueError(f"screen must be a cheaper fidelity than full (e.g. steps:10%), got {self.screen!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def single_changes(sizes: Sequence[int]) -> list[Candidate]:
    """Every candidate that changes exactly one slot, slot by slot."""
    base = [0] * len(sizes)
    return [tuple(base[:i] + [o] + base[i + 1:]) for i, n in enumerate(sizes) for o in range(1, n)]


def stratified(singles: Sequence[Candidate], rng) -> list[Candidate]:
    """Singles in an order that gives every slot a look before any slot a second: options shuffled within each slot,
    slots shuffled within each round."""
    by_slot: dict[int, list[Candidate]] = {}
    for c in singles:
        by_slot.setdefault(next(i for i, x in enumerate(c) if x), []).append(c)
    for opts in by_slot.values():
        rng.shuffle(opts)
    order: list[Candidate] = []
    for r in range(max((len(v) for v in by_slot.values()), default=0)):
        slots = [i for i, v in by_slot.items() if r < len(v)]
        rng.shuffle(slots)
        order += [by_slot[i][r] for i in slots]
    return order


def greedy_search(problem: Problem, evaluator: Evaluator, config: GreedyConfig | None = None, *,
                  seed: int = 0) -> SearchResult:
    config = config or GreedyConfig()
    rng = make_rng(seed, "greedy")
    sizes = problem.space.sizes
    step = max(1, getattr(getattr(problem, "sampling", None), "batch_size", 8))
    queue = stratified(single_changes(sizes), rng)
    extra: dict = {"config": config.to_dict(), "singles": len(queue), "rounds": 0}
    try:
        evaluator.evaluate([problem.space.default], source="user")
        allot = config.singles_share * evaluator.remaining
        if config.screen and len(queue) * evaluator.evaluation_cost > allot:
            queue = _screen_singles(evaluator, queue, config.screen, allot, step)
            extra["screened"] = config.screen
        _evaluate_in_batches(evaluator, queue, allot, step, "single")
        extra["rounds"] = _combine(evaluator, sizes, config)
        _evaluate_in_batches(evaluator, queue, evaluator.remaining, step, "single")
    except BudgetExhausted:
        pass
    extra["singles_scored"] = sum(1 for c in single_changes(sizes) if c in evaluator.evaluations)
    return finish("greedy", evaluator, extra)


def _evaluate_in_batches(evaluator: Evaluator, queue: list[Candidate], allot: float, step: int, source: str) -> None:
    """Full evaluations of ``queue``'s unscored candidates, in order and in batches, while ``allot`` lasts."""
    unit = evaluator.evaluation_cost
    todo = [c for c in queue if c not in evaluator.evaluations and c not in evaluator.rejected]
    spent = 0.0
    while todo and spent + unit <= allot + 1e-9:
        take = min(step, int((allot - spent + 1e-9) // unit))
        batch, todo = todo[:take], todo[take:]
        before = evaluator.cost
        evaluator.evaluate(batch, source=source)
        spent += evaluator.cost - before


def _screen_singles(evaluator: Evaluator, queue: list[Candidate], fidelity: str, allot: float,
                    step: int) -> list[Candidate]:
    """Preview the singles at ``fidelity`` (as many as half of ``allot`` pays for, in ``queue``'s order); returns the
    queue with the previewed ones first, best preview first."""
    fid = evaluator.fidelity(fidelity)
    n = int((allot / 2 + 1e-9) // evaluator.cost_of(fid))
    looked = queue[:n]
    for i in range(0, len(looked), step * 4):
        evaluator.evaluate(looked[i:i + step * 4], source="single-screen", fidelity=fid)
    scores = {c: e.objective for (c, name), e in evaluator.previews.items() if name == fid.name}
    ranked = sorted((c for c in looked if c in scores), key=lambda c: scores[c])
    return ranked + [c for c in queue if c not in scores]


def _combine(evaluator: Evaluator, sizes: Sequence[int], config: GreedyConfig) -> int:
    """Beam rounds over the best single changes; returns how many rounds ran."""
    user = evaluator.evaluations.get(tuple([0] * len(sizes)))
    singles = sorted((e for c, e in evaluator.evaluations.items() if num_changed(c) == 1),
                     key=lambda e: e.objective)
    good = [e.candidate for e in singles if user is None or e.objective < user.objective][: config.expand]
    beam: list[Evaluation] = singles[: config.beam]
    best = min((e.objective for e in beam), default=float("inf"))
    rounds = 0
    while beam and good:
        children = list(dict.fromkeys(c for state in beam for c in _extend(state.candidate, good, config)
                                      if c not in evaluator.evaluations and c not in evaluator.rejected))
        if not children:
            break
        rounds += 1
        evaluator.evaluate(children, source=f"combine-{rounds}")
        pool = beam + [evaluator.evaluations[c] for c in children if c in evaluator.evaluations]
        beam = sorted(pool, key=lambda e: e.objective)[: config.beam]
        if beam[0].objective >= best:
            break
        best = beam[0].objective
    return rounds


def _extend(state: Candidate, good: Sequence[Candidate], config: GreedyConfig) -> list[Candidate]:
    """``state`` with one more of the ``good`` single changes, on a slot it leaves unchanged."""
    out = []
    if config.max_changes and num_changed(state) >= config.max_changes:
        return out
    for single in good:
        i = next(k for k, x in enumerate(single) if x)
        if state[i] == 0:
            out.append(tuple(single[i] if k == i else x for k, x in enumerate(state)))
    return out
