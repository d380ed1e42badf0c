"""The shortcut text gradient (DPO-Diff, paper Sec. 4.2).

Backpropagating through all T sampling steps costs memory linear in T (75 GB for SD v1.x at 50 steps). The
shortcut: run steps ``[0, k)`` without grad, ``K`` grad-enabled steps from k, then jump to x0 in one step from the
last model output (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), or sqrt(abar) x_t - sqrt(1 - abar) v for
v-prediction; x0 = x_t - sigma v for flow matching), decode, and score with the judge. Memory and time of the
backward pass do not depend on T. The loop's pieces come from the backend (:mod:`dpo_diff.backends.base`), so the
same function serves every backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dpo_diff.backends.base import Conditioning


def shortcut_images(backend, text: Conditioning, seeds: Sequence[int], *, steps: int, guidance_scale: float,
                    start_step: int, grad_steps: int = 1, height: int | None = None,
                    width: int | None = None) -> Tensor:
    """Images ``Tensor[S, 3, H, W]`` decoded from the one-step x0 estimate, differentiable w.r.t. ``text``.

    Args:
        text: conditioning with batch 1 (broadcast to every seed) or one row per seed.
        start_step: k, the number of no-grad steps (``0 <= k``, ``k + grad_steps <= steps``).
        grad_steps: K >= 1 grad-enabled UNet calls; the last one's output gives x0.
    """
    if grad_steps < 1:
        raise ValueError(f"grad_steps must be >= 1, got {grad_steps}")
    if not 0 <= start_step <= steps - grad_steps:
        raise ValueError(
            f"start_step must be in [0, steps - grad_steps] = [0, {steps - grad_steps}], got {start_step}")
    text = text.expand(len(seeds))
    scheduler = backend.new_scheduler(steps, height, width)
    latents = backend.initial_latents(seeds, scheduler, height, width)
    with torch.no_grad():  # 1. the prefix: no activations kept, whatever k is
        latents = backend.denoise(scheduler, latents, text, guidance_scale, range(start_step))
    # 2. K - 1 full grad-enabled steps, 3. the K-th model call jumps straight to x0.
    latents = backend.denoise(scheduler, latents, text, guidance_scale, range(start_step, start_step + grad_steps - 1))
    last = start_step + grad_steps - 1
    t = scheduler.timesteps[last]
    out, x_t = backend.guided_prediction(scheduler, latents, t, text, guidance_scale)
    x0 = backend.x0_estimate(scheduler, out, x_t, last)
    return backend.decode(x0).float()

