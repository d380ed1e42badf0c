"""GPO recovers from out-of-memory and from fp16 gradient overflow (issue #20, items 3 and 4), on the CPU with a
synthetic problem whose relaxation fails on purpose."""

from __future__ import annotations

import weakref

import torch

from dpo_diff.search.base import Evaluator
from dpo_diff.search.gradient import GradientSearchConfig, train_mixture
from dpo_diff.testing import SyntheticProblem, synthetic_space

ONE_SHOT = dict(budget_share=None, min_iterations=1, score_every=0)


class OomOnce(SyntheticProblem):
    """The second chunk's forward raises out-of-memory with its output alive in its frame (as a real CUDA OOM leaves
    the failed forward's activations in the traceback's frames). Records whether the retry's forward still sees the
    first chunk's loss (a graph output the search kept bound) or the failed chunk's."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls, self.refs, self.alive_at_retry = 0, [], None

    def relaxation(self):
        real = super().relaxation()

        def loss(weights, seeds, *, start_step, grad_steps):
            self.calls += 1
            if self.calls == 3:  # the retry after the failure, with a smaller chunk
                self.alive_at_retry = [ref() is not None for ref in self.refs]
            out = real(weights, seeds, start_step=start_step, grad_steps=grad_steps)
            if self.calls <= 2:
                self.refs.append(weakref.ref(out))  # 1: the first chunk's loss; 2: the failing chunk's
            if self.calls == 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return out

        return loss


def test_an_out_of_memory_retry_starts_after_the_failed_graph_is_freed():
    problem = OomOnce(synthetic_space(3, 4), seed=0)
    config = GradientSearchConfig(iterations=1, samples=4, sample_chunk=2, **ONE_SHOT)
    state = train_mixture(problem, Evaluator(problem, (0,), 10), config, seed=0)
    assert problem.alive_at_retry == [False, False], "the retry ran while the failed attempt's tensors were alive"
    assert problem.calls == 2 + 4  # 2 chunks of 2 (the second fails), then the seed again in 4 chunks of 1
    assert len(state.log) == 1 and torch.isfinite(state.mixture.logits).all()
