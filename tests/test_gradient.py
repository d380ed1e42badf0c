from functools import partial

import pytest
import torch

from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.search.base import Evaluator
from dpo_diff.search.gradient import GradientError, GradientSearchConfig, NaNLossError, parse_k_schedule, train_mixture
from dpo_diff.space import space_from_substitutes

PAPER = partial(GradientSearchConfig.preset, "paper")
SPACE = space_from_substitutes("a red dog on grass", {"dog": ["cat", "fox"], "grass": ["sand"]},
                               {"red": ["blue", "green"], "grass": ["snow"]})


def make_problem(backend, judge, task="improve", space=SPACE):
    return Problem(space, Task(task), backend, judge, SamplingConfig(steps=10, guidance_scale=7.5))


@pytest.mark.parametrize("task", ["improve", "attack"])
def test_one_gpo_step_reaches_and_changes_every_slot(backend, judge, task):
    problem = make_problem(backend, judge, task)
    ev = Evaluator(problem, (0, 1), budget=10)
    grads = []

    def on_iteration(state):
        grads.append(state.mixture.logits.grad.clone())

    state = train_mixture(problem, ev, PAPER(iterations=1), seed=0, on_iteration=on_iteration)
    g = grads[0]
    for i, size in enumerate(SPACE.sizes):
        assert g[i, :size].abs().sum() > 0, f"slot {i} ({SPACE.slots[i].word}) got no gradient"
        assert g[i, size:].abs().sum() == 0
    init = torch.zeros_like(state.mixture.logits)
    init[:, 0] = 1
    changed = (state.mixture.logits.detach() - init).abs().sum(-1)
    assert (changed > 0).all(), changed
    assert state.mixture.logits.min() >= 0 and state.mixture.logits.max() <= 3  # clamped to [0, 3]
    # cost: (k + K) / steps per seed; k = round(15 * 10 / 50) = 3
    assert ev.cost == pytest.approx(2 * (3 + 1) / 10)
    assert state.log[0]["k"] == 3


def test_gpo_loss_moves_over_iterations(backend, judge):
    problem = make_problem(backend, judge)
    ev = Evaluator(problem, (0,), budget=100)
    state = train_mixture(problem, ev, PAPER(iterations=4, lr=0.5, grad_clip=1.0), seed=1)
    losses = [r["loss"] for r in state.log]
    assert len(set(round(x, 6) for x in losses)) > 1
    assert state.best_logits is not None and state.best_loss == min(r["objective"] for r in state.log)


def test_gpo_stops_at_the_budget(backend, judge):
    problem = make_problem(backend, judge)
    ev = Evaluator(problem, (0,), budget=2.0)
    state = train_mixture(problem, ev, PAPER(iterations=20), seed=0)
    # 0.4 + 0.4 spent; a third iteration (0.5) would leave less than one full evaluation (1.0) for the result
    assert ev.cost == pytest.approx(0.8) and len(state.log) == 2


class ConstantJudge:
    def loss(self, images, text):
        return images.sum(dim=(1, 2, 3)) * 0 + 0.5


class NaNJudge:
    def loss(self, images, text):
        return images.sum(dim=(1, 2, 3)) * float("nan")


def test_zero_gradient_fails_loudly(backend):
    problem = make_problem(backend, ConstantJudge())
    with pytest.raises(GradientError, match="exactly zero"):
        train_mixture(problem, Evaluator(problem, (0,), 10), PAPER(iterations=1), seed=0)


def test_nan_loss_stops_with_last_state_saved(backend):
    problem = make_problem(backend, NaNJudge())
    saved = []
    with pytest.raises(NaNLossError, match="last good"):
        train_mixture(problem, Evaluator(problem, (0,), 10), PAPER(iterations=2), seed=0,
                      on_iteration=saved.append)
    assert saved, "the state was not handed to the checkpoint callback before stopping"


def test_k_schedules():
    import random

    cfg = GradientSearchConfig()
    ks = [cfg.k_at(i, 50, random.Random(0)) for i in range(20)]
    assert ks == [15, 15, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20, 21, 21, 22, 22, 23, 23, 24, 24]
    assert GradientSearchConfig(k_schedule="fixed-20").k_at(7, 50, random.Random(0)) == 20
    r = [GradientSearchConfig(k_schedule="random-10-30").k_at(i, 50, random.Random(i)) for i in range(30)]
    assert min(r) >= 10 and max(r) <= 30 and len(set(r)) > 3
    for bad in ("step-15", "linear-1-2", "random-30-10", "step-15-0"):
        with pytest.raises(ValueError, match="schedule"):
            parse_k_schedule(bad)
    with pytest.raises(ValueError, match="k \\+ grad_steps"):
        GradientSearchConfig(k_schedule="fixed-50", grad_steps=2).k_at(0, 50, random.Random(0))
    assert parse_k_schedule("step-15-2") == ("step", 15, 2)


def test_grad_steps_k_more_than_one(backend, judge):
    problem = make_problem(backend, judge)
    ev = Evaluator(problem, (0,), budget=10)
    state = train_mixture(problem, ev, PAPER(iterations=1, grad_steps=3), seed=0)
    assert ev.cost == pytest.approx((3 + 3) / 10) and state.log


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_text_gradient_is_finite_and_nonzero(tiny_sd, judge, dtype):
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    half = StableDiffusionBackend.from_pretrained(tiny_sd, dtype=dtype)
    problem = Problem(SPACE, Task("improve"), half, judge, SamplingConfig(steps=6))
    grads = []
    train_mixture(problem, Evaluator(problem, (0,), 10), PAPER(iterations=1), seed=0,
                  on_iteration=lambda s: grads.append(s.mixture.logits.grad.clone()))
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    assert half.generate(["a dog"], [""], [0], steps=3).dtype == torch.float32  # judged in fp32


def test_robust_gpo_step_averages_samples_and_seeds_on_the_real_model(backend, judge):
    problem = make_problem(backend, judge)
    ev = Evaluator(problem, (0, 1), budget=40)
    cfg = GradientSearchConfig(iterations=3, samples=3, score_every=0, budget_share=None, min_iterations=1)
    state = train_mixture(problem, ev, cfg, seed=0)
    # cost: 3 samples x 2 seeds x (k + K) / steps per iteration, k = 3 of 10 steps
    assert len(state.log) == 3 and ev.cost == pytest.approx(3 * 3 * 2 * 4 / 10)
    logits = state.mixture.logits.detach()
    assert logits.min() >= 0 and logits.max() <= 3.0
    assert (logits != torch.tensor([[1.0, 0, 0]] * len(SPACE.sizes))).any()
    # the logits sit on the 1e-3 grid: float noise below it cannot move them
    assert torch.allclose(logits, torch.round(logits * 1000) / 1000, atol=1e-6)


def test_robust_gpo_learns_the_same_logits_with_one_and_two_threads(backend, judge):
    """The robust preset snaps gradients and logits to a 1e-3 grid, so float noise from the thread count (~1e-7)
    cannot grow into different logits (the paper's RMSprop amplified it 3-10x per iteration)."""
    problem = make_problem(backend, judge)
    cfg = GradientSearchConfig(iterations=4, samples=2, score_every=0, budget_share=None, min_iterations=1)
    before = torch.get_num_threads()
    learned = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            state = train_mixture(problem, Evaluator(problem, (0, 1), budget=40), cfg, seed=3)
            learned.append(state.mixture.logits.detach().clone())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(learned[0], learned[1])
