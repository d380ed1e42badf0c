"""mf spends what its rounds leave on full evaluations of the next-best previews in sampler-sized batches, not one
candidate per model call (issue 27): the same candidates, fewer and fuller batches."""

from __future__ import annotations

from dpo_diff.fidelity import Fidelity
from dpo_diff.problem import SamplingConfig
from dpo_diff.search.api import search
from dpo_diff.testing import SyntheticProblem, synthetic_space


class Batches(SyntheticProblem):
    """Records the rows of every full-sampler evaluation call (one model batch on a real backend)."""

    def __init__(self, *a, batch_size: int = 8, **k):
        super().__init__(*a, **k)
        self.sampling = SamplingConfig(steps=self.sampling.steps, batch_size=batch_size)
        self.full_batches: list[int] = []

    def candidate_losses(self, candidates, seeds, fidelity="full"):
        if Fidelity.parse(fidelity, self.sampling.steps).is_full:
            self.full_batches.append(len(candidates))
        return super().candidate_losses(candidates, seeds, fidelity)


def run(batch_size: int):
    # 63 alternatives: the screen sees them all on a fraction of its share, so the rounds leave most of the budget
    problem = Batches(synthetic_space(3, 4), steps=20, batch_size=batch_size)
    result = search(problem, method="mf", budget=60, seeds=(0,), seed=1)
    return problem, result


def test_leftover_promotions_go_in_sampler_sized_batches():
    problem, result = run(batch_size=8)
    promoted = [e for e in result.evaluations if e.source.startswith("promoted")]
    assert len(promoted) > 8, "the test needs a leftover worth batching"
    ones = problem.full_batches.count(1)
    assert ones <= 1, f"{ones} of {len(problem.full_batches)} full evaluations ran one candidate at a time"


def test_batching_does_not_change_what_is_evaluated():
    _, batched = run(batch_size=8)
    _, single = run(batch_size=1)
    assert [e.candidate for e in batched.evaluations] == [e.candidate for e in single.evaluations]
    assert batched.cost == single.cost
