"""Gradient-based prompt optimization (the paper's GPO) with the shortcut text gradient.

Each iteration draws soft Gumbel-softmax weights over every slot, encodes the mixed prompt *through the text
encoder*, runs the shortcut (k no-grad steps, K grad steps, one-step x0, decode, CLIP judge) and updates the slot
logits. Afterwards distinct candidates are sampled from the learned distribution (the argmax first) and scored with
the full sampler by the :class:`~dpo_diff.search.base.Evaluator`.

Two named presets (:data:`GPO_PRESETS`):

* ``paper``: the paper's settings: one Gumbel sample per step, RMSprop (lr 0.1, momentum 0.5, element-wise gradient
  clip 0.025, logits clamped to [0, 3]), 20 iterations whatever the budget. PyTorch's RMSprop has no bias
  correction, so its first step moves every logit by about lr / sqrt(1 - alpha) = 1: two single-sample gradients
  largely decide the learned distribution, and float noise of 1e-7 (e.g. another thread count) grows 3-10x per
  iteration until the answer changes.
* ``robust`` (default): several Gumbel samples per step (batched), the gradient averaged over every search seed (one
  backward pass per seed, so memory stays flat in the number of seeds), steps on the gradient normalized per slot
  (no first step of +-1 decided by one sample; small, noisy entries stay small instead of being blown up to a full
  step as element-wise RMSprop/Adam do), gradients and
  logits snapped to a fine grid so that float noise below the grid cannot grow, and a budget share: GPO stops at
  ``budget_share`` of the budget so the evaluation stage always runs, and is skipped when that share is too small to
  learn anything (the record says so).

While learning, the argmax of the current distribution is scored exactly every ``score_every`` iterations (charged
to the budget), so a run stopped early keeps an evaluated best-so-far prompt (anytime behaviour).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch

from dpo_diff.device import is_out_of_memory, release_memory
from dpo_diff.problem import Problem
from dpo_diff.relax import WordMixture
from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.cost import generation_calls, shortcut_cost
from dpo_diff.seeding import derive_seed, torch_generator

OPTIMIZERS = ("normalized", "adam", "rmsprop")
_SCHEDULE_RE = re.compile(r"^(step|fixed|random)-(\d+)(?:-(\d+))?$")


class GradientError(RuntimeError):
    """The text gradient is unusable (non-finite, or exactly zero: e.g. fp16 underflow)."""


class GradientOverflow(GradientError):
    """A non-finite text gradient: under fp16's dynamic loss scale, the scale backs off and the iteration is redone."""


class GradientUnderflow(GradientError):
    """An exactly-zero text gradient: under fp16's dynamic loss scale, the scale grows and the iteration is redone."""


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
    """GPO settings. The defaults are the ``robust`` preset; ``GradientSearchConfig.preset("paper")`` gives the
    paper's."""

    iterations: int = 20  # at most this many iterations (fewer when the budget share runs out)
    tau: float = 1.0  # Gumbel-softmax temperature; soft samples, as in the paper
    samples: int = 4  # Gumbel samples per iteration, averaged; paper: 1
    # samples per forward/backward pass. None: all at once on the CPU (3x faster than one by one there), one at a
    # time on a GPU, which keeps an iteration's memory at the paper's (SD v1.x 512 px: ~7 GB); set it higher on a
    # large GPU for speed. Out-of-memory halves it in any case.
    sample_chunk: int | None = None
    # normalized: SGD with momentum on the gradient divided by each slot's largest entry (every slot learns at the
    # same speed, options keep their relative gradients, tiny noisy entries stay tiny); adam: bias-corrected
    # element-wise steps; rmsprop: the paper's (no bias correction: the first step moves every logit by ~1)
    optimizer: Literal["normalized", "adam", "rmsprop"] = "normalized"
    lr: float = 0.4
    momentum: float = 0.5  # RMSprop and normalized SGD
    alpha: float = 0.99  # RMSprop smoothing
    grad_clip: float = 0.025  # element-wise clip of the raw logit gradient (rmsprop and adam)
    logit_min: float = 0.0
    logit_max: float = 3.0
    # shift: a slot whose top logit passes logit_max is shifted down (softmax unchanged) before clamping, so options
    # keep their order instead of tying at the ceiling; clamp: the paper's plain clamp to [logit_min, logit_max]
    box: Literal["shift", "clamp"] = "shift"
    quantum: float = 1e-3  # logits snap to this grid and gradients to this fraction of their largest entry; 0: off
    # k counts denoiser calls (scheduler entries; dpo_diff.search.cost), written for 50 of them: k scales with a full
    # generation's calls / 50 (Heun's 2n - 1 calls for n steps: the same share of the trajectory as DDIM's n)
    k_schedule: str = "step-15-2"
    grad_steps: int = 1  # K grad-enabled UNet calls
    num_samples: int = 32  # gpo method: most candidates sampled from the learned distribution afterwards
    budget_share: float | None = 0.3  # GPO stops at this fraction of the budget; None: only `iterations` limits it
    min_iterations: int = 3  # fewer affordable iterations than this: skip GPO (sample the prior instead)
    score_every: int = 5  # score the learned argmax exactly every this many iterations (anytime best); 0: never
    # fp16: the first loss scale (None: 1024, which keeps the text gradient from underflowing), then dynamic as in
    # torch.amp.GradScaler (see LossScale); other dtypes: a fixed scale (None: 1)
    loss_scale: float | None = None
    # fp16: the scale doubles after this many iterations without overflow. GradScaler's 2000 suits training runs of
    # 1e5 steps; GPO runs ~20 iterations, where 2000 would make every back-off permanent and leave the text gradient
    # closer to underflow for the rest of the run. 5 lets it climb back 3-4 times per run, at the price of at most
    # one redone iteration in 6 where the scale sits just below overflow.
    loss_scale_growth: int = 5

    def __post_init__(self) -> None:
        parse_k_schedule(self.k_schedule)
        if self.sample_chunk is not None and self.sample_chunk < 1:
            raise ValueError(f"sample_chunk must be >= 1 or None, got {self.sample_chunk}")
        if self.loss_scale is not None and not 0 < self.loss_scale < math.inf:
            raise ValueError(f"loss_scale must be a positive finite number or None, got {self.loss_scale}")
        for name in ("iterations", "grad_steps", "samples", "min_iterations", "loss_scale_growth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_samples", "score_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.tau > 0 or not self.lr > 0:
            raise ValueError(f"tau and lr must be > 0, got tau={self.tau}, lr={self.lr}")
        if not self.logit_min < self.logit_max:
            raise ValueError(f"need logit_min < logit_max, got [{self.logit_min}, {self.logit_max}]")
        if self.box not in ("shift", "clamp"):
            raise ValueError(f"box must be 'shift' or 'clamp', got {self.box!r}")
        if not 0 <= self.quantum < 0.1:
            raise ValueError(f"quantum must be in [0, 0.1), got {self.quantum}")
        if self.budget_share is not None and not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1] or None, got {self.budget_share}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GradientSearchConfig:
        """The named settings (``robust`` or ``paper``), with ``overrides`` applied."""
        if name not in GPO_PRESETS:
            raise ValueError(f"unknown GPO preset {name!r}; choose one of {sorted(GPO_PRESETS)}")
        return replace(GPO_PRESETS[name], **overrides)

    def k_bound(self, iteration: int, calls: int) -> int:
        """k (no-grad denoiser calls) at ``iteration`` when a full generation makes ``calls`` denoiser calls
        (``random`` schedules: their largest k)."""
        kind, a, b = parse_k_schedule(self.k_schedule)
        k = a + iteration // b if kind == "step" else (a if kind == "fixed" else b)
        return round(k * calls / 50)

    def k_at(self, iteration: int, calls: int, rng: random.Random) -> int:
        kind, a, b = parse_k_schedule(self.k_schedule)
        k = round(rng.randint(a, b) * calls / 50) if kind == "random" else self.k_bound(iteration, calls)
        if k + self.grad_steps > calls:
            raise ValueError(
                f"k schedule {self.k_schedule!r} reaches k={k} at iteration {iteration}, but k + grad_steps must be "
                f"<= the denoiser calls of a full generation ({calls}); use fewer iterations or a smaller schedule"
            )
        return k

    def validate_for(self, calls: int) -> None:
        """Check up front that every iteration's k fits ``calls`` denoiser calls (raises the error k_at would). The
        sampling steps are a lower bound of the calls (Heun and PNDM make more), so a config can be checked with
        them before the model is loaded."""
        k_max = self.k_bound(self.iterations - 1, calls)  # k never decreases along a schedule
        if k_max + self.grad_steps > calls:
            raise ValueError(
                f"k schedule {self.k_schedule!r} over {self.iterations} iterations reaches k={k_max}, but "
                f"k + grad_steps must be <= the denoiser calls of a full generation ({calls}); use fewer "
                f"iterations or a smaller schedule"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GPO_PRESETS: dict[str, GradientSearchConfig] = {  # names also in dpo_diff.search.GPO_PRESET_NAMES (no torch)
    "robust": GradientSearchConfig(),
    "paper": GradientSearchConfig(samples=1, optimizer="rmsprop", lr=0.1, box="clamp", quantum=0.0,
                                  budget_share=None, min_iterations=1, score_every=0),
}


@dataclass
class LossScale:
    """The text gradient's loss scale. ``dynamic`` (fp16) as ``torch.amp.GradScaler``: an overflow halves it (GPO
    then redoes the iteration) and ``growth_interval`` clean iterations in a row double it; fixed otherwise."""

    scale: float
    dynamic: bool = False
    growth_interval: int = 5
    clean: int = 0  # clean iterations since the last back-off or growth
    backoffs: list[dict[str, float]] = field(default_factory=list)  # iteration, scale before and after

    growths: list[dict[str, float]] = field(default_factory=list)  # doublings after an exactly-zero gradient
    underflows: list[dict[str, float]] = field(default_factory=list)  # iterations with some slots' gradient at 0

    def back_off(self, iteration: int) -> None:
        self.backoffs.append({"iteration": iteration, "from": self.scale, "to": self.scale / 2})
        self.scale, self.clean = self.scale / 2, 0

    def grow(self, iteration: int) -> None:
        """Double the scale after a gradient that underflowed to exactly zero (the iteration is then redone)."""
        self.growths.append({"iteration": iteration, "from": self.scale, "to": self.scale * 2})
        self.scale, self.clean = self.scale * 2, 0

    def clean_step(self) -> None:
        if not self.dynamic:
            return
        self.clean += 1
        if self.clean >= self.growth_interval:
            self.scale, self.clean = self.scale * 2, 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "clean": self.clean, "backoffs": [dict(b) for b in self.backoffs],
                "growths": [dict(b) for b in self.growths], "underflows": [dict(b) for b in self.underflows]}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.scale, self.clean, self.backoffs = float(d["scale"]), int(d["clean"]), [dict(b) for b in d["backoffs"]]
        # checkpoints written before growths and underflows were kept have neither
        self.growths = [dict(b) for b in d.get("growths", [])]
        self.underflows = [dict(b) for b in d.get("underflows", [])]


@dataclass
class GradientState:
    """What GPO learned: the mixture, the best iterate and a per-iteration log; :meth:`checkpoint` captures
    everything needed to continue exactly (optimizer moments and random streams included)."""

    mixture: WordMixture
    optimizer: torch.optim.Optimizer | None = None
    best_logits: torch.Tensor | None = None
    best_loss: float = math.inf
    best_k: int | None = None
    log: list[dict[str, float]] = field(default_factory=list)
    skipped: str = ""  # why GPO did not run (e.g. a budget too small to learn anything)
    scored: list[tuple[int, ...]] = field(default_factory=list)  # candidates scored exactly while learning
    gpo_cost: float = 0.0  # budget charged by the gradient iterations themselves
    streams: dict[str, Any] = field(default_factory=dict)
    loss_scale: LossScale = field(default_factory=lambda: LossScale(1.0))

    def checkpoint(self) -> dict[str, Any]:
        return {"logits": self.mixture.logits.detach().cpu().clone(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "best_logits": self.best_logits, "best_loss": self.best_loss, "best_k": self.best_k,
                "log": list(self.log), "scored": list(self.scored), "gpo_cost": self.gpo_cost,
                "streams": {"gumbel": self.streams["gumbel"].get_state(), "k": self.streams["k"].getstate()},
                "loss_scale": self.loss_scale.state_dict()}

    def restore(self, ckpt: dict[str, Any]) -> None:
        with torch.no_grad():
            self.mixture.logits.copy_(ckpt["logits"].to(self.mixture.logits.device))
        if self.optimizer is not None and ckpt.get("optimizer"):
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.best_logits, self.best_loss, self.best_k = ckpt["best_logits"], ckpt["best_loss"], ckpt["best_k"]
        self.log, self.scored, self.gpo_cost = list(ckpt["log"]), [tuple(c) for c in ckpt["scored"]], ckpt["gpo_cost"]
        self.streams["gumbel"].set_state(ckpt["streams"]["gumbel"])
        self.streams["k"].setstate(ckpt["streams"]["k"])
        if "loss_scale" in ckpt:  # checkpoints written before the scale was dynamic start from the first scale
            self.loss_scale.load_state_dict(ckpt["loss_scale"])


def _make_optimizer(mixture: WordMixture, config: GradientSearchConfig) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(mixture.parameters(), lr=config.lr, momentum=config.momentum, alpha=config.alpha)
    if config.optimizer == "adam":
        return torch.optim.Adam(mixture.parameters(), lr=config.lr)
    return torch.optim.SGD(mixture.parameters(), lr=config.lr, momentum=config.momentum)


def _snap(x: torch.Tensor, step: float) -> torch.Tensor:
    """Round to a grid of ``step``: float noise far below the grid (thread counts, kernels) cannot change the result
    unless a value sits within that noise of a rounding boundary."""
    return torch.round(x / step) * step if step > 0 else x


def _gpo_budget(evaluator: Evaluator, config: GradientSearchConfig) -> float:
    """The cost GPO's iterations may spend: its share of the budget, always leaving one exact evaluation."""
    cap = evaluator.remaining - evaluator.evaluation_cost
    if config.budget_share is not None:
        cap = min(cap, config.budget_share * evaluator.budget - evaluator.cost)
    return cap


def _iteration_cost(config: GradientSearchConfig, k: int, n_seeds: int, calls: int) -> float:
    """Full-generation equivalents of one iteration: ``samples x seeds`` shortcut passes of ``k + K`` denoiser
    calls, a full generation making ``calls`` (:func:`dpo_diff.search.cost.shortcut_cost`)."""
    return config.samples * n_seeds * shortcut_cost(k, config.grad_steps, calls)


def affordable_iterations(evaluator: Evaluator, config: GradientSearchConfig, calls: int) -> int:
    """How many iterations of the k schedule fit GPO's budget, a full generation making ``calls`` denoiser calls
    (``random`` schedules: counted at their largest k)."""
    budget, spent, n = _gpo_budget(evaluator, config), 0.0, 0
    while n < config.iterations:
        spent += _iteration_cost(config, config.k_bound(n, calls), len(evaluator.seeds), calls)
        if spent > budget + 1e-9:
            break
        n += 1
    return n


def gpo_shortfall(evaluator: Evaluator, config: GradientSearchConfig, calls: int) -> int | None:
    """The iterations GPO's budget affords when they are fewer than ``config.min_iterations`` (GPO is then
    skipped), else ``None``. The one rule: :func:`train_mixture` applies it, and ``optimize`` warns with it before
    anything is generated."""
    planned = affordable_iterations(evaluator, config, calls)
    return planned if planned < config.min_iterations else None


def _first_chunk(problem: Problem, config: GradientSearchConfig) -> int:
    if config.sample_chunk is not None:
        return min(config.sample_chunk, config.samples)
    device = getattr(getattr(problem, "backend", None), "device", None)
    return 1 if device is not None and torch.device(device).type != "cpu" else config.samples


def _seed_gradient(problem: Problem, relaxed, weights: torch.Tensor, seed: int, k: int, config, scale: float,
                   chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective gradient w.r.t. ``weights[M, S, O]`` and the M losses on one image seed. The M Gumbel samples go
    through the model in chunks of ``chunk[0]`` rows; on out-of-memory the chunk halves and the seed is redone."""
    while True:
        try:
            return _chunked_gradient(problem, relaxed, weights, seed, k, config, scale, chunk[0])
        except Exception as e:  # noqa: BLE001 - only out-of-memory (cuBLAS/cuDNN allocation failures too) is retried
            if chunk[0] == 1 or not is_out_of_memory(e):
                raise
        # Retried only here, after the except block: until it ends, the exception's traceback pins the failed
        # forward's frames and so its graph and activations, which would then share the GPU with the retry.
        chunk[0] = max(1, chunk[0] // 2)  # remembered for later seeds and iterations
        release_memory()


def _chunked_gradient(problem: Problem, relaxed, weights: torch.Tensor, seed: int, k: int, config, scale: float,
                      chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    m = weights.shape[0]
    grad, losses = torch.zeros_like(weights), []
    for lo in range(0, m, chunk):
        g, part = _chunk_gradient(problem, relaxed, weights[lo : lo + chunk], seed, k, config, scale / m)
        grad[lo : lo + g.shape[0]] = g
        losses.append(part)
    return grad, torch.cat(losses)


def _chunk_gradient(problem: Problem, relaxed, weights: torch.Tensor, seed: int, k: int, config,
                    factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's gradient and detached losses; a function of its own so that no tensor of its graph (the loss,
    the objective) outlives it and stays allocated while the next chunk runs."""
    w = weights.detach().requires_grad_(True)
    part = relaxed(w, [seed] * w.shape[0], start_step=k, grad_steps=config.grad_steps)
    objective = problem.task.objective(part).sum() * factor
    return torch.autograd.grad(objective, w)[0], part.detach().float()


def _check_gradient(grad: torch.Tensor | None, it: int, scale: float, dtype) -> None:
    if grad is None or not torch.isfinite(grad).all():
        raise GradientOverflow(f"non-finite text gradient at iteration {it} (loss scale {scale}); with fp16 use "
                               f"bf16 or a smaller loss_scale")
    if not grad.abs().sum() > 0:
        raise GradientUnderflow(
            f"the text gradient is exactly zero at iteration {it} (dtype {dtype}); in fp16 it can "
            f"underflow: use --dtype bf16/fp32 or raise loss_scale (now {scale})"
        )


def _gpo_step(problem: Problem, relaxed, state: GradientState, config: GradientSearchConfig, it: int, k: int,
              seeds: Sequence[int], scale: float, chunk: list[int], timings: dict[str, float]) -> float:
    """One GPO iteration: M Gumbel samples x every seed, one backward per seed; returns the mean loss."""
    mixture = state.mixture
    t0 = time.perf_counter()
    weights = mixture.sample_weights(config.tau, state.streams["gumbel"], num=config.samples)  # [M, S, O]
    grad_w, losses = torch.zeros_like(weights), []
    for s in seeds:
        g, part = _seed_gradient(problem, relaxed, weights, s, k, config, scale, chunk)
        grad_w += g / len(seeds)
        losses.append(part)
    loss = torch.cat(losses).mean()
    if not torch.isfinite(loss):
        raise NaNLossError(f"GPO loss is {loss.item()} at iteration {it} (k={k}); the last good logits were "
                           f"saved. Try fp32/bf16 or fewer grad steps.")
    state.optimizer.zero_grad(set_to_none=True)
    weights.backward(grad_w)  # from the Gumbel-softmax weights to the slot logits
    grad = mixture.logits.grad
    _check_gradient(grad, it, scale, problem.compute_dtype)
    grad.div_(scale)
    if config.quantum > 0:
        grad.copy_(_snap(grad, config.quantum * float(grad.abs().max())))
    if config.optimizer == "normalized":
        grad.div_(grad.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny))
    timings["gpo_gradient"] = timings.get("gpo_gradient", 0.0) + time.perf_counter() - t0
    return float(loss)


MAX_BACKOFFS = 16  # per iteration (1024 -> 1/64): an overflow that survives them is not the scale's (e.g. NaN weights)
MAX_GROWTHS = 12  # per iteration (1024 -> 2^22): a zero gradient that survives them is not an underflow


def _first_loss_scale(problem: Problem, config: GradientSearchConfig) -> LossScale:
    fp16 = problem.compute_dtype == torch.float16
    return LossScale(config.loss_scale or (1024.0 if fp16 else 1.0), dynamic=fp16,
                     growth_interval=config.loss_scale_growth)


def _scaled_step(problem: Problem, relaxed, state: GradientState, config: GradientSearchConfig, it: int, k: int,
                 seeds: Sequence[int], chunk: list[int], timings: dict[str, float]) -> float:
    """One iteration under the loss scale. Dynamic (fp16): an overflow halves the scale and an exactly-zero gradient
    (underflow) doubles it, and the iteration is redone on the same Gumbel samples (GradScaler skips the step
    instead; GPO's ~20 iterations cannot spare one); the redone work is not charged, so fp16 learns on the budget
    bf16 would. Slots whose gradient alone underflowed are recorded (``LossScale.underflows``). Other dtypes: a
    non-finite or zero gradient raises."""
    scale = state.loss_scale
    gumbel = state.streams["gumbel"].get_state()
    halvings = doublings = 0
    while True:
        try:
            loss = _gpo_step(problem, relaxed, state, config, it, k, seeds, scale.scale, chunk, timings)
            break
        except (GradientUnderflow, GradientOverflow) as e:
            if not scale.dynamic:
                raise
            under = isinstance(e, GradientUnderflow)
            if (doublings, halvings)[not under] == (MAX_GROWTHS, MAX_BACKOFFS)[not under]:
                raise GradientError(f"{e}: " + (
                    f"still exactly zero after {MAX_GROWTHS} doublings of the fp16 loss scale, so the objective "
                    f"does not depend on the prompt here" if under else
                    f"still non-finite after {MAX_BACKOFFS} halvings of the fp16 loss scale, so the overflow is not "
                    f"the scale's; use --dtype bf16 or fp32")) from None
            doublings, halvings = doublings + under, halvings + (not under)
            (scale.grow if under else scale.back_off)(it)
        state.streams["gumbel"].set_state(gumbel)
    if scale.dynamic:
        zero = _zero_slots(state.mixture)
        if zero:
            scale.underflows.append({"iteration": it, "scale": scale.scale, "zero_slots": len(zero)})
    scale.clean_step()
    return loss


def _zero_slots(mixture: WordMixture) -> list[int]:
    """Slots with a choice (two or more options) whose logit gradient is exactly zero while another slot's is not:
    in fp16, the sign of a partial underflow (a slot that does not reach the loss, e.g. a negative-prompt slot
    without guidance, looks the same)."""
    grad = mixture.logits.grad
    sizes = mixture.sizes
    zero = [i for i, n in enumerate(sizes) if n > 1 and not bool(grad[i, :n].abs().sum() > 0)]
    return zero if len(zero) < sum(n > 1 for n in sizes) else []


def _update(state: GradientState, config: GradientSearchConfig, value: float, k: int) -> None:
    """Best-iterate tracking *before* the step (the loss belongs to the logits it was measured at), compared only
    between iterations at the same k (a larger k sees a less noisy x0, so its losses are not comparable)."""
    mixture = state.mixture
    if state.best_k != k or value < state.best_loss:
        state.best_loss, state.best_logits, state.best_k = value, mixture.logits.detach().cpu().clone(), k
    if config.optimizer != "normalized":  # normalized gradients are already bounded by 1
        torch.nn.utils.clip_grad_value_(mixture.parameters(), config.grad_clip)
    state.optimizer.step()
    with torch.no_grad():
        logits = mixture.logits
        if config.box == "shift":
            top = mixture.masked_logits().amax(dim=-1, keepdim=True)
            logits = logits - (top - config.logit_max).clamp_min(0)
        mixture.logits.copy_(_snap(logits.clamp(config.logit_min, config.logit_max), config.quantum))


def train_mixture(problem: Problem, evaluator: Evaluator, config: GradientSearchConfig, seed: int,
                  on_iteration: Callable[[GradientState], None] | None = None,
                  resume: dict[str, Any] | None = None) -> GradientState:
    """Learn the slot logits with the shortcut text gradient within GPO's share of the budget.

    ``resume``: a :meth:`GradientState.checkpoint` of an interrupted run; learning continues from it exactly.
    """
    calls = generation_calls(problem)  # k and the charge count denoiser calls, not steps (Heun, PNDM: more)
    config.validate_for(calls)
    mixture = WordMixture(problem.space.sizes)
    state = GradientState(mixture, _make_optimizer(mixture, config),
                          streams={"gumbel": torch_generator(seed, "gumbel"),
                                   "k": random.Random(derive_seed(seed, "k-schedule"))},
                          loss_scale=_first_loss_scale(problem, config))
    planned = gpo_shortfall(evaluator, config, calls)
    if resume is not None:
        state.restore(resume)
        evaluator.charge(state.gpo_cost)  # what the interrupted run spent learning, in the same order of magnitude
        _score(evaluator, state.scored)
    elif planned is not None:
        state.skipped = (f"GPO skipped: the budget share allows {planned} iteration(s), fewer than "
                         f"min_iterations={config.min_iterations}; the search starts from the prior instead")
        return state
    relaxed = problem.relaxation()  # templates and constant sides, built once
    chunk = [_first_chunk(problem, config)]
    for it in range(len(state.log), config.iterations):
        k = config.k_at(it, calls, state.streams["k"])
        cost = _iteration_cost(config, k, len(evaluator.seeds), calls)
        if cost > _gpo_budget(evaluator, config) + 1e-9 or evaluator.out_of_time:
            break
        try:
            loss = _scaled_step(problem, relaxed, state, config, it, k, evaluator.seeds, chunk, evaluator.timings)
        except NaNLossError:
            if on_iteration:
                on_iteration(state)
            raise
        evaluator.charge(cost)
        state.gpo_cost += cost
        value = float(problem.task.objective(loss))
        _update(state, config, value, k)
        state.log.append({"iteration": it, "k": k, "loss": loss, "objective": value, "cost": evaluator.cost})
        if config.score_every and (it + 1) % config.score_every == 0:
            _score(evaluator, [mixture.argmax()], state)
        if on_iteration:
            on_iteration(state)
    return state


def _score(evaluator: Evaluator, candidates: list[tuple[int, ...]], state: GradientState | None = None) -> None:
    """Exact evaluation of candidates met while learning (the anytime best-so-far); never over the budget."""
    todo = [c for c in candidates if c not in evaluator.evaluations]
    if not todo or not evaluator.can_afford(evaluator.evaluation_cost * len(todo)):
        return
    evaluator.evaluate(todo, source="gpo-argmax")
    if state is not None:
        state.scored.extend(todo)


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


def gpo_extra(state: GradientState) -> dict[str, Any]:
    """What a GPO-based search records next to its result."""
    extra: dict[str, Any] = {"gpo_log": state.log, "logits": state.mixture.logits.detach().cpu().tolist()}
    if state.skipped:
        extra["gpo_skipped"] = state.skipped
    if state.loss_scale.dynamic:
        ls = state.loss_scale
        extra["loss_scale"] = {"final": ls.scale, "backoffs": ls.backoffs,
                               **({"growths": ls.growths} if ls.growths else {}),
                               **({"underflows": ls.underflows} if ls.underflows else {})}
    return extra


def gradient_search(problem: Problem, evaluator: Evaluator, config: GradientSearchConfig | None = None, *,
                    seed: int = 0, on_iteration: Callable[[GradientState], None] | None = None,
                    resume: dict[str, Any] | None = None) -> SearchResult:
    """GPO: shortcut-gradient training, then the rest of the budget on samples from the learned distribution."""
    config = config or GradientSearchConfig()
    state = train_mixture(problem, evaluator, config, seed, on_iteration, resume)
    if state.skipped:  # nothing learned: samples of the untrained prior would mostly repeat the user's words
        from dpo_diff.search.random_search import random_search

        result = random_search(problem, evaluator, seed=seed)
        result.method = "gpo"
        result.extra.update(gpo_extra(state))
        result.extra["gpo_skipped"] += "; GPO ran random search"
        return result
    n = min(config.num_samples, int((evaluator.remaining + 1e-9) // evaluator.evaluation_cost))
    if config.budget_share is not None:  # the budget-aware GPO spends everything left on samples
        n = int((evaluator.remaining + 1e-9) // evaluator.evaluation_cost)
    try:
        evaluator.evaluate(sample_learned(state, n, seed, exclude=set(evaluator.evaluations)), source="gpo-sample")
    except BudgetExhausted:
        pass
    return finish("gpo", evaluator, gpo_extra(state))
