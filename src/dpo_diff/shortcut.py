"""The shortcut text gradient (DPO-Diff, paper Sec. 4.2).

Backpropagating through all T sampling steps costs memory linear in T (75 GB for SD v1.x at 50 steps). The
shortcut: run steps ``[0, k)`` without grad, ``K`` grad-enabled steps from k, then jump to x0 in one step from the
last model output (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), or sqrt(abar) x_t - sqrt(1 - abar) v for
v-prediction; x0 = x_t - sigma v for flow matching), decode, and score with the judge. Memory and time of the
backward pass do not depend on T. The loop's pieces come from the backend (:mod:`dpo_diff.backends.base`), so the
same function serves every backbone.

Gradient checkpointing (``checkpointing=True``) keeps only block inputs of the K grad-enabled denoiser calls and of
the VAE decode and recomputes the rest during backward (one more forward of each; the same gradient), for the large
backbones (SDXL at 1024 px: ~22 GB per grad step without it). A backend with ``set_block_checkpointing`` checkpoints
per block with diffusers' own gradient checkpointing (it acts in grad mode only, so it is left on: the no-grad
prefix and exact generation are unaffected); for any other backend whole denoiser calls and the decode are
checkpointed here, scheduler steps outside (they are stateful).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dpo_diff.backends.base import Conditioning


def shortcut_images(backend, text: Conditioning, seeds: Sequence[int], *, steps: int, guidance_scale: float,
                    start_step: int, grad_steps: int = 1, height: int | None = None,
                    width: int | None = None, checkpointing: bool = False) -> Tensor:
    """Images ``Tensor[S, 3, H, W]`` decoded from the one-step x0 estimate, differentiable w.r.t. ``text``.

    Args:
        text: conditioning with batch 1 (broadcast to every seed) or one row per seed.
        start_step: k, the number of no-grad denoiser calls, i.e. scheduler entries (``0 <= k``, ``k + grad_steps``
            at most the entries of ``steps`` sampling steps: ``steps`` for DDIM, 2 steps - 1 for Heun, ...).
        grad_steps: K >= 1 grad-enabled denoiser calls; the last one's output gives x0.
        checkpointing: recompute the grad-enabled denoiser calls and the decode in backward instead of keeping
            their activations (same gradients, less memory, ~one more forward; see the module docstring).
    """
    if grad_steps < 1:
        raise ValueError(f"grad_steps must be >= 1, got {grad_steps}")
    scheduler = backend.new_scheduler(steps, height, width)
    calls = len(scheduler.timesteps)  # one denoiser call per entry: more than `steps` for Heun and PNDM
    if not 0 <= start_step <= calls - grad_steps:
        raise ValueError(f"start_step must be in [0, calls - grad_steps] = [0, {calls - grad_steps}] ({calls} "
                         f"denoiser calls for {steps} steps), got {start_step}")
    text = text.expand(len(seeds))
    latents = backend.initial_latents(seeds, scheduler, height, width)
    with torch.no_grad():  # 1. the prefix: no activations kept, whatever k is
        latents = backend.denoise(scheduler, latents, text, guidance_scale, range(start_step))
    by_block = checkpointing and hasattr(backend, "set_block_checkpointing")
    if by_block:  # left on: turning it off before backward would change what diffusers' nested checkpoints recompute
        backend.set_block_checkpointing(True)
    whole_calls = checkpointing and not by_block
    with _checkpointed_predictions(backend, whole_calls):
        # 2. K - 1 full grad-enabled steps, 3. the K-th model call jumps straight to x0.
        latents = backend.denoise(scheduler, latents, text, guidance_scale,
                                  range(start_step, start_step + grad_steps - 1))
        last = start_step + grad_steps - 1
        t = scheduler.timesteps[last]
        out, x_t = backend.guided_prediction(scheduler, latents, t, text, guidance_scale)
    x0 = backend.x0_estimate(scheduler, out, x_t, last)
    if whole_calls:
        return checkpoint(backend.decode, x0, use_reentrant=False).float()
    return backend.decode(x0).float()


@contextlib.contextmanager
def _checkpointed_predictions(backend, enabled: bool) -> Iterator[None]:
    """Within the block, the backend's ``guided_prediction`` (called by its own ``denoise`` loop too) runs under
    ``torch.utils.checkpoint``. Backward recomputes it with a copy of the scheduler as it was at the forward call:
    schedulers advance a step index in ``step`` (Euler's ``scale_model_input`` reads it)."""
    if not enabled:
        yield
        return
    own = backend.__dict__.get("guided_prediction")  # an instance override (e.g. a test's spy) stays in the chain
    inner = own if own is not None else backend.guided_prediction

    def guided_prediction(scheduler, latents, t, text, guidance_scale):
        frozen, calls = copy.copy(scheduler), []

        def run(latents_):
            sched = scheduler if not calls else frozen  # the first call is the forward; later ones recompute
            calls.append(1)
            return inner(sched, latents_, t, text, guidance_scale)

        return checkpoint(run, latents, use_reentrant=False)

    backend.guided_prediction = guided_prediction
    try:
        yield
    finally:
        if own is None:
            del backend.guided_prediction
        else:
            backend.guided_prediction = own


class SavedTensorBytes:
    """Counts the bytes autograd keeps for backward (storages counted once), e.g. to compare memory of the shortcut
    at different step counts or with and without checkpointing::

        with SavedTensorBytes() as saved:
            loss = relaxed(weights, seeds, start_step=k, grad_steps=1).sum()
        saved.bytes
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        if t.device.type == "meta":  # no storage to share: every saved tensor counts (an upper bound)
            self.bytes += t.nelement() * t.element_size()
            return t
        try:
            key = t.untyped_storage().data_ptr()
        except RuntimeError:  # tensors without storage (e.g. meta or wrapper subclasses)
            return t
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

