"""Out-of-memory during exact evaluation (issue #27): the judge runs inside the back-off unit, cuBLAS/cuDNN
allocation failures count as out-of-memory, and the cache is emptied only once the failed attempt is freed.
CPU only: the failures are raised on purpose, as a GPU raises them."""

from __future__ import annotations

import weakref

import pytest
import torch

from dpo_diff.device import is_out_of_memory
from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.search.base import Evaluator
from dpo_diff.search.gradient import GradientSearchConfig, train_mixture
from dpo_diff.space import space_from_substitutes
from dpo_diff.testing import SyntheticProblem, synthetic_space

SPACE = space_from_substitutes("a red dog on the grass", {"dog": ["hound", "puppy"]},
                               {"red": ["blue", "green"], "grass": ["sand", "snow"]})
CANDS = [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
ALLOC = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")


class Wrapped:
    """Forwards everything to ``inner``; subclasses fail some calls like a GPU out of memory."""

    def __init__(self, inner, limit: int = 2, error: BaseException | None = None):
        self.inner, self.limit, self.sizes = inner, limit, []
        self.error = error or torch.OutOfMemoryError("CUDA out of memory (simulated)")

    def __getattr__(self, name):
        return getattr(self.inner, name)


class JudgeOom(Wrapped):
    """A judge that runs out of memory on more than ``limit`` images (a VQA 7B judge at batch 32)."""

    def loss(self, images, texts):
        self.sizes.append(len(images))
        if len(images) > self.limit:
            raise self.error
        return self.inner.loss(images, texts)


class BackendFails(Wrapped):
    def generate(self, prompts, *a, **k):
        self.sizes.append(len(prompts))
        if len(prompts) > self.limit:
            raise self.error
        return self.inner.generate(prompts, *a, **k)


def reference(backend, judge):
    ref = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=4, batch_size=8))
    return ref.candidate_losses(CANDS, (0, 1))


def test_a_judge_out_of_memory_halves_the_batch_instead_of_failing(backend, judge):
    fake = JudgeOom(judge)
    problem = Problem(SPACE, Task("improve"), backend, fake, SamplingConfig(steps=4, batch_size=8))
    torch.testing.assert_close(problem.candidate_losses(CANDS, (0, 1)), reference(backend, judge))
    assert fake.sizes == [6, 4, 2, 2, 2]  # 6 and 4 failed (batch size 8, then 4), then pairs


def test_a_cublas_allocation_failure_is_treated_as_out_of_memory(backend, judge):
    fake = BackendFails(backend, error=ALLOC)
    problem = Problem(SPACE, Task("improve"), fake, judge, SamplingConfig(steps=4, batch_size=8))
    torch.testing.assert_close(problem.candidate_losses(CANDS, (0, 1)), reference(backend, judge))
    assert fake.sizes == [6, 4, 2, 2, 2]


def test_other_runtime_errors_are_not_retried(backend, judge):
    fake = BackendFails(backend, error=RuntimeError("CUDA error: device-side assert triggered"))
    problem = Problem(SPACE, Task("improve"), fake, judge, SamplingConfig(steps=4, batch_size=8))
    with pytest.raises(RuntimeError, match="device-side assert"):
        problem.candidate_losses(CANDS, (0, 1))
    assert fake.sizes == [6]


@pytest.mark.parametrize("error, oom", [
    (torch.OutOfMemoryError("CUDA out of memory"), True), (ALLOC, True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("CUDA error: out of memory"), True), (RuntimeError("shape mismatch"), False),
    (ValueError("CUBLAS_STATUS_ALLOC_FAILED"), False)])
def test_what_counts_as_out_of_memory(error, oom):
    assert is_out_of_memory(error) is oom


class Leaky:
    """A generator whose first (large) batch fails with a tensor alive in its frame, as a real CUDA OOM leaves the
    failed forward's activations in the traceback; records whether that tensor is still alive when the cache is
    emptied."""

    def __init__(self):
        self.ref, self.alive_at_empty_cache = None, []

    def run(self, chunk):
        activations = torch.ones(1000)
        if self.ref is None:
            self.ref = weakref.ref(activations)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.zeros(len(chunk))


def test_the_cache_is_emptied_after_the_failed_attempt_is_freed(backend, judge, monkeypatch):
    leaky = Leaky()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: leaky.alive_at_empty_cache.append(leaky.ref() is not None))
    problem = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=4, batch_size=4))
    chunks = [c for c, _ in problem._backoff(list(range(4)), leaky.run)]
    assert chunks == [[0, 1], [2, 3]]
    assert leaky.alive_at_empty_cache == [False], "empty_cache ran while the traceback pinned the failed frame"


class AllocOnce(SyntheticProblem):
    """GPO's second chunk fails with a cuBLAS allocation error (a RuntimeError, not torch.OutOfMemoryError)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = 0

    def relaxation(self):
        real = super().relaxation()

        def loss(weights, seeds, **kw):
            self.calls += 1
            if self.calls == 2:
                raise ALLOC
            return real(weights, seeds, **kw)

        return loss


def test_gpo_retries_a_cublas_allocation_failure_with_a_smaller_chunk():
    problem = AllocOnce(synthetic_space(3, 4), seed=0)
    config = GradientSearchConfig(iterations=1, samples=4, sample_chunk=2, budget_share=None, min_iterations=1,
                                  score_every=0)
    state = train_mixture(problem, Evaluator(problem, (0,), 10), config, seed=0)
    assert problem.calls == 2 + 4 and len(state.log) == 1
