"""Gradient-based prompt optimization (the paper's GPO) with the shortcut text gradient.

Each iteration draws soft Gumbel-softmax weights over every slot, encodes the mixed prompt *through the text
encoder*, runs the shortcut (k no-grad steps, K grad steps, one-step x0, decode, CLIP judge) on several seeds, and
updates the slot logits with RMSprop (lr 0.1, momentum 0.5, element-wise gradient clip 0.025, logits clamped to
[0, 3]): the paper's settings. After training, distinct candidates are sampled from the learned distribution (the
argmax first) and scored with the full sampler by the :class:`~dpo_diff.search.base.Evaluator`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dpo_diff.problem import Problem
from dpo_diff.relax import WordMixture
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.seeding import derive_seed, torch_generator

_SCHEDULE_RE = re.compile(r"^(step|fixed|random)-(\d+)(?:-(\d+))?$")


class GradientError(RuntimeError):
    """The text gradient is unusable (non-finite, or exactly zero: e.g. fp16 underflow)."""


class NaNLossError(RuntimeError):
    """The loss became NaN; the last good state was saved."""


def parse_k_schedule(spec: str) -> tuple[str, int, int | None]:
    """``step-A-B`` (k = A + i // B, the paper's ``step-15-2``), ``fixed-A``, ``random-A-B`` (uniform in [A, B])."""
    m = _SCHEDULE_RE.match(spec)
    if not m or (m.group(1) in ("step", "random") and m.group(3) is None):
        raise ValueError(f"unknown k schedule {spec!r}; use 'step-A-B' (e.g. step-15-2), 'fixed-A' or 'random-A-B'")
    kind, a, b = m.group(1), int(m.group(2)), (int(m.group(3)) if m.group(3) else None)
    if kind == "step" and b == 0:
        raise ValueError(f"k schedule {spec!r}: the step interval B must be >= 1")
    if kind == "random" and b is not None and b < a:
        raise ValueError(f"k schedule {spec!r}: need A <= B")
    return kind, a, b


@dataclass(frozen=True)
class GradientSearchConfig:
    """GPO settings (defaults: the paper's)."""

    iterations: int = 20
    tau: float = 1.0  # Gumbel-softmax temperature; soft samples (not straight-through), as in the paper
    lr: float = 0.1
    momentum: float = 0.5
    alpha: float = 0.99  # RMSprop smoothing
    grad_clip: float = 0.025  # element-wise clip of the logit gradient
    logit_min: float = 0.0
    logit_max: float = 3.0
    k_schedule: str = "step-15-2"  # written for 50 sampling steps; k scales with steps/50 for other step counts
    grad_steps: int = 1  # K grad-enabled UNet calls
    num_samples: int = 32  # distinct candidates drawn from the learned distribution afterwards (argmax first)
    loss_scale: float | None = None  # None: 1 for fp32/bf16, 1024 for fp16 (keeps the text gradient from underflowing)

    def __post_init__(self) -> None:
        parse_k_schedule(self.k_schedule)
        for name in ("iterations", "grad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not self.logit_min < self.logit_max:
            raise ValueError(f"need logit_min < logit_max, got [{self.logit_min}, {self.logit_max}]")

    def k_at(self, iteration: int, steps: int, rng: random.Random) -> int:
        kind, a, b = parse_k_schedule(self.k_schedule)
        if kind == "step":
            k = a + iteration // b
        elif kind == "fixed":
            k = a
        else:
            k = rng.randint(a, b)
        k = round(k * steps / 50)
        if k + self.grad_steps > steps:
            raise ValueError(
                f"k schedule {self.k_schedule!r} reaches k={k} at iteration {iteration}, but k + grad_steps must be "
                f"<= steps ({steps}); use fewer iterations or a smaller schedule"
            )
        return k

    def validate_for(self, steps: int) -> None:
        """Check up front that every iteration's k fits ``steps`` (raises the same error k_at would)."""
        kind, a, b = parse_k_schedule(self.k_schedule)
        worst = {"step": lambda: a + (self.iterations - 1) // b, "fixed": lambda: a, "random": lambda: b}[kind]()
        k_max = round(worst * steps / 50)
        if k_max + self.grad_steps > steps:
            raise ValueError(
                f"k schedule {self.k_schedule!r} over {self.iterations} iterations reaches k={k_max}, but "
                f"k + grad_steps must be <= steps ({steps}); use fewer iterations or a smaller schedule"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GradientState:
    """What GPO learned: the final mixture, the best iterate and a per-iteration log."""

    mixture: WordMixture
    best_logits: torch.Tensor | None = None
    best_loss: float = math.inf
    log: list[dict[str, float]] = field(default_factory=list)


def train_mixture(problem: Problem, evaluator: Evaluator, config: GradientSearchConfig, seed: int,
                  on_iteration: Callable[[GradientState], None] | None = None) -> GradientState:
    """Learn the slot logits with the shortcut text gradient until ``config.iterations`` or the budget runs out."""
    space, sc = problem.space, problem.sampling
    config.validate_for(sc.steps)
    mixture = WordMixture(space.sizes)
    opt = torch.optim.RMSprop(mixture.parameters(), lr=config.lr, momentum=config.momentum, alpha=config.alpha)
    gumbel = torch_generator(seed, "gumbel")
    k_rng = random.Random(derive_seed(seed, "k-schedule"))
    relaxed = problem.relaxation()  # templates and constant sides, built once
    dtype = problem.compute_dtype
    scale = config.loss_scale or (1024.0 if dtype == torch.float16 else 1.0)
    state = GradientState(mixture)
    seeds = evaluator.seeds
    for it in range(config.iterations):
        k = config.k_at(it, sc.steps, k_rng)
        cost = len(seeds) * (k + config.grad_steps) / sc.steps
        if not evaluator.can_afford(cost + evaluator.evaluation_cost):
            break  # keep budget for at least one full evaluation of what was learned
        weights = mixture.sample_weights(config.tau, gumbel)
        losses = relaxed(weights, seeds, start_step=k, grad_steps=config.grad_steps)
        loss = losses.mean()
        if not torch.isfinite(loss):
            if on_iteration:
                on_iteration(state)
            raise NaNLossError(f"GPO loss is {loss.item()} at iteration {it} (k={k}); the last good logits were "
                               f"saved. Try fp32/bf16 or fewer grad steps.")
        opt.zero_grad(set_to_none=True)
        (problem.task.objective(loss) * scale).backward()
        grad = mixture.logits.grad
        if grad is None or not torch.isfinite(grad).all():
            raise GradientError(f"non-finite text gradient at iteration {it} (loss scale {scale}); with fp16 use "
                                f"bf16 or a smaller loss_scale")
        grad.div_(scale)
        if not grad.abs().sum() > 0:
            raise GradientError(
                f"the text gradient is exactly zero at iteration {it} (dtype {dtype}); in fp16 it can "
                f"underflow: use --dtype bf16/fp32 or raise loss_scale (now {scale})"
            )
        evaluator.charge(cost)
        torch.nn.utils.clip_grad_value_(mixture.parameters(), config.grad_clip)
        opt.step()
        with torch.no_grad():
            mixture.logits.clamp_(config.logit_min, config.logit_max)
        value = float(problem.task.objective(loss.detach()))
        if value < state.best_loss:  # best-iterate tracking (the objective is stochastic: Gumbel noise, seeds)
            state.best_loss, state.best_logits = value, mixture.logits.detach().clone()
        state.log.append({"iteration": it, "k": k, "loss": float(loss.detach()), "objective": value,
                          "cost": evaluator.cost})
        if on_iteration:
            on_iteration(state)
    return state


def sample_learned(state: GradientState, n: int, seed: int, exclude=frozenset()) -> list[tuple[int, ...]]:
    """Distinct candidates from the learned distribution: argmax of the final and of the best iterate first."""
    gen = torch_generator(seed, "gpo-sample")
    first = [state.mixture.argmax()]
    if state.best_logits is not None:
        best = WordMixture(state.mixture.sizes)
        best.logits.data.copy_(state.best_logits.cpu())
        first.append(best.argmax())
    out = [c for c in dict.fromkeys(first) if c not in exclude][:n]
    out += state.mixture.sample_candidates(n - len(out), gen, first_argmax=False, exclude=set(exclude) | set(out))
    return out


def gradient_search(problem: Problem, evaluator: Evaluator, config: GradientSearchConfig | None = None, *,
                    seed: int = 0, on_iteration: Callable[[GradientState], None] | None = None) -> SearchResult:
    """GPO: shortcut-gradient training, then full-sampler evaluation of samples from the learned distribution."""
    config = config or GradientSearchConfig()
    state = train_mixture(problem, evaluator, config, seed, on_iteration)
    try:
        evaluator.evaluate(sample_learned(state, config.num_samples, seed), source="gpo-sample")
    except BudgetExhausted:
        pass
    return finish("gpo", evaluator, {"gpo_log": state.log, "logits": state.mixture.logits.detach().cpu().tolist()})
