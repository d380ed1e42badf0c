"""GPO recovers from out-of-memory and from fp16 gradient overflow (issue #20, items 3 and 4), on the CPU with a
synthetic problem whose relaxation fails on purpose."""

from __future__ import annotations

import weakref

import pytest
import torch

from dpo_diff.optimize import load_gpo_state, save_gpo_state
from dpo_diff.relax import WordMixture
from dpo_diff.search.base import Evaluator
from dpo_diff.search.gradient import GradientError, GradientSearchConfig, gpo_extra, train_mixture
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


class Fp16Overflow(SyntheticProblem):
    """An fp16 problem whose backward overflows above a loss scale: the loss passes through fp16 times 1e-3, so its
    gradient is 1e3 x scale / samples in fp16, inf above 65504 (a scale above 65 with one sample)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.compute_dtype, self.forwards = torch.float16, 0

    def relaxation(self):
        real = super().relaxation()

        def loss(weights, seeds, **kw):
            self.forwards += 1
            return (real(weights, seeds, **kw).half() * 1e-3).float() * 1e3

        return loss


FP16 = GradientSearchConfig(iterations=8, samples=1, **ONE_SHOT)


def test_an_fp16_overflow_halves_the_loss_scale_and_redoes_the_iteration():
    problem = Fp16Overflow(synthetic_space(3, 4), seed=0)
    state = train_mixture(problem, Evaluator(problem, (0,), 40), FP16, seed=0)
    assert len(state.log) == 8 and torch.isfinite(state.mixture.logits).all()
    assert not torch.equal(state.mixture.logits, WordMixture(problem.space.sizes).logits), "nothing was learned"
    # 1024 -> 64 at iteration 0; 5 clean iterations double it (0-4); 128 overflows again at iteration 5
    assert [(b["iteration"], b["from"]) for b in state.loss_scale.backoffs] == [
        (0, 1024), (0, 512), (0, 256), (0, 128), (5, 128)]
    assert state.loss_scale.scale == 64 and problem.forwards == 8 + 5
    assert gpo_extra(state)["loss_scale"] == {"final": 64, "backoffs": state.loss_scale.backoffs}


def test_a_resumed_fp16_run_continues_with_its_loss_scale(tmp_path):
    problem = Fp16Overflow(synthetic_space(3, 4), seed=0)
    full = train_mixture(problem, Evaluator(problem, (0,), 40), FP16, seed=0)

    class Crash(Exception):
        pass

    def crash_after_four(state):
        save_gpo_state(tmp_path / "gpo.pt", state.checkpoint())
        if len(state.log) == 4:  # 4 clean iterations at 64: the fifth doubles the scale
            raise Crash

    with pytest.raises(Crash):
        train_mixture(problem, Evaluator(problem, (0,), 40), FP16, seed=0, on_iteration=crash_after_four)
    again = Fp16Overflow(synthetic_space(3, 4), seed=0)
    ckpt = load_gpo_state(tmp_path / "gpo.pt")
    resumed = train_mixture(again, Evaluator(again, (0,), 40), FP16, seed=0, resume=ckpt)
    assert resumed.loss_scale.state_dict() == full.loss_scale.state_dict()
    assert again.forwards == 4 + 1  # iterations 4-7 and one redo at 5, as in the uninterrupted run
    assert torch.equal(resumed.mixture.logits, full.mixture.logits)


class NaNGradient(Fp16Overflow):
    """fp16 with a NaN text gradient at any scale (the backward of sqrt at 0, times 0): not the scale's fault."""

    def relaxation(self):
        real = super().relaxation()
        return lambda weights, seeds, **kw: real(weights, seeds, **kw) + (weights * 0).sum().sqrt()


def test_an_overflow_that_no_loss_scale_cures_stops_with_a_clear_error():
    problem = NaNGradient(synthetic_space(3, 4), seed=0)
    with pytest.raises(GradientError, match="still non-finite after 16 halvings .* use --dtype bf16 or fp32"):
        train_mixture(problem, Evaluator(problem, (0,), 40), FP16, seed=0)
    assert problem.forwards == 17


class Attenuate(torch.autograd.Function):
    """Identity forward; the backward passes the gradient through fp16 times ``factor`` (a Jacobian that small, as
    in a deep fp16 network) and undoes the factor in fp32: below 2^-24 / factor it underflows to exactly zero."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.factor).half().float() / ctx.factor, None


class Fp16Underflow(SyntheticProblem):
    """fp16 whose text gradient underflows to exactly zero below a loss scale of 2^16 (factor 2^-40: 2^16 x 2^-40 is
    fp16's smallest subnormal); ``slot``: only that slot's weights are attenuated, beyond any scale (partial)."""

    def __init__(self, *a, slot: int | None = None, **k):
        super().__init__(*a, **k)
        self.compute_dtype, self.forwards, self.slot = torch.float16, 0, slot

    def relaxation(self):
        real = super().relaxation()

        def loss(weights, seeds, **kw):
            self.forwards += 1
            if self.slot is None:
                return Attenuate.apply(real(weights, seeds, **kw), 2.0**-40)
            dim = self.slot
            parts = [Attenuate.apply(w, 2.0**-80) if i == dim else w
                     for i, w in enumerate(weights.unbind(dim=-2))]
            return real(torch.stack(parts, dim=-2), seeds, **kw)

        return loss


def test_an_fp16_underflow_grows_the_loss_scale_and_redoes_the_iteration():
    problem = Fp16Underflow(synthetic_space(3, 4), seed=0)
    state = train_mixture(problem, Evaluator(problem, (0,), 40), FP16, seed=0)
    assert len(state.log) == 8 and torch.isfinite(state.mixture.logits).all()
    assert not torch.equal(state.mixture.logits, WordMixture(problem.space.sizes).logits), "nothing was learned"
    assert [(g["iteration"], g["from"]) for g in state.loss_scale.growths] == [(0, 2.0**s) for s in range(10, 16)]
    assert state.loss_scale.backoffs == [] and problem.forwards == 8 + 6
    assert state.loss_scale.scale == 2.0**17  # 2^16 after the redo, doubled after 5 clean iterations
    assert gpo_extra(state)["loss_scale"]["growths"] == state.loss_scale.growths


def test_a_zero_gradient_no_scale_cures_stops_with_a_clear_error():
    problem = Fp16Underflow(synthetic_space(3, 4), seed=0)
    problem.relaxation = lambda real=problem.relaxation: (lambda w, s, **kw: real()(w, s, **kw) * 0)
    with pytest.raises(GradientError, match="still exactly zero after 12 doublings"):
        train_mixture(problem, Evaluator(problem, (0,), 40), FP16, seed=0)


def test_a_partial_fp16_underflow_is_recorded():
    problem = Fp16Underflow(synthetic_space(3, 4), seed=0, slot=1)
    state = train_mixture(problem, Evaluator(problem, (0,), 40), FP16, seed=0)
    assert len(state.log) == 8 and state.loss_scale.growths == []
    assert [(u["iteration"], u["zero_slots"]) for u in state.loss_scale.underflows] == [(i, 1) for i in range(8)]
    assert gpo_extra(state)["loss_scale"]["underflows"] == state.loss_scale.underflows
