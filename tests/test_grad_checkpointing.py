"""Gradient checkpointing of the shortcut text gradient: the same gradient, fewer bytes kept for backward."""

from __future__ import annotations

import pytest
import torch

from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.relax import WordMixture
from dpo_diff.shortcut import SavedTensorBytes, shortcut_images
from dpo_diff.space import space_from_substitutes

SPACE = space_from_substitutes("a red dog on grass", {"dog": ["cat", "golden retriever"]},
                               {"red": ["blue"], "grass": ["sand"]})


def gradient(backend, judge, checkpointing: bool, grad_steps: int) -> tuple[torch.Tensor, int]:
    sampling = SamplingConfig(steps=5, guidance_scale=5.0, grad_checkpointing=checkpointing)
    relaxed = Problem(SPACE, Task("improve"), backend, judge, sampling).relaxation()
    mix = WordMixture(SPACE.sizes)
    w = mix.sample_weights(1.0, torch.Generator().manual_seed(0))
    with SavedTensorBytes() as saved:
        loss = relaxed(w, (0, 1), start_step=1, grad_steps=grad_steps).sum()
    loss.backward()
    return mix.logits.grad, saved.bytes


class WithoutBlockCheckpointing:
    """Hides ``set_block_checkpointing`` from a backend class, so the shortcut checkpoints whole calls itself."""

    @property
    def set_block_checkpointing(self):
        raise AttributeError("set_block_checkpointing")


# Euler: its scale_model_input reads a step index that scheduler.step advances, so recomputing a whole call in
# backward must see the scheduler as it was (K = 2 recomputes a call made before a step).
@pytest.mark.parametrize("by_block", [True, False])
@pytest.mark.parametrize("scheduler, grad_steps", [("ddim", 1), ("euler", 2)])
def test_checkpointing_gives_the_same_gradient_and_keeps_less(tiny_sd, judge, scheduler, grad_steps, by_block):
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    whole = type("Whole", (WithoutBlockCheckpointing, StableDiffusionBackend), {})
    cls = StableDiffusionBackend if by_block else whole
    b = StableDiffusionBackend.from_pretrained(tiny_sd)
    backend = cls(b.tokenizer, b.text_encoder, b.unet, b.vae, b.new_scheduler(), scheduler_name=scheduler)
    plain, plain_bytes = gradient(backend, judge, False, grad_steps)
    ckpt, ckpt_bytes = gradient(backend, judge, True, grad_steps)
    assert plain.abs().max() > 0
    torch.testing.assert_close(ckpt, plain, atol=1e-6, rtol=1e-5)
    print(f"saved for backward: {plain_bytes / 2**20:.2f} MB plain, {ckpt_bytes / 2**20:.2f} MB checkpointed")
    assert ckpt_bytes < 0.5 * plain_bytes
    assert getattr(backend, "block_checkpointing", False) == by_block
    assert "guided_prediction" not in backend.__dict__  # the whole-call wrapper is removed afterwards


def test_checkpointing_on_sdxl(tiny_sdxl, judge):
    from dpo_diff.backends.sdxl import StableDiffusionXLBackend

    backend = StableDiffusionXLBackend.from_pretrained(tiny_sdxl, scheduler="model")
    plain, plain_bytes = gradient(backend, judge, False, 2)
    ckpt, ckpt_bytes = gradient(backend, judge, True, 2)
    torch.testing.assert_close(ckpt, plain, atol=1e-6, rtol=1e-5)
    # measured 0.52: the tiny model's many small blocks keep their inputs (full size: benchmarks/shortcut_memory.py)
    assert ckpt_bytes < 0.7 * plain_bytes and backend.block_checkpointing


@pytest.mark.slow
def test_full_size_sdxl_keeps_little_for_backward_on_meta():
    """SDXL-base shapes at 1024 px on the ``meta`` device (shapes, no values or memory): one GPO iteration through
    both text encoders, the UNet and the VAE, forward and backward. Without checkpointing autograd would keep ~75 GB
    (counting every saved tensor); with per-block checkpointing under 4 GB (measured 2.8 GB), to which the GPU adds
    the weights (6.5 GB) and one block's recomputation (the VAE's last up block, at most ~6 GB)."""
    from dpo_diff.testing_sdxl import random_sdxl_backend

    backend = random_sdxl_backend("meta", "bf16", "full")
    make = backend.new_scheduler
    backend.new_scheduler = lambda n=None, h=None, w=None: _cpu_timesteps(make(), n)  # meta has no values
    backend.alpha_bar = lambda scheduler, t: 0.5
    w = WordMixture(SPACE.sizes).sample_weights(1.0, torch.Generator().manual_seed(0)).detach()
    w = w.to("meta").requires_grad_()
    text = backend.relaxed_conditioning(SPACE, guidance_scale=5.0)(w)
    assert text.cond.shape == (1, 77, 2048) and text.pooled.shape == (1, 1280)
    with SavedTensorBytes() as saved:
        images = shortcut_images(backend, text, [0], steps=4, guidance_scale=5.0, start_step=1, checkpointing=True)
    assert images.shape == (1, 3, 1024, 1024)
    images.sum().backward()
    assert w.grad.shape == w.shape and saved.bytes < 4 * 2**30, saved.bytes / 2**30


def _cpu_timesteps(scheduler, num_steps):
    if num_steps is not None:
        scheduler.set_timesteps(num_steps, device="cpu")
    return scheduler
