"""Gradient checkpointing of the shortcut text gradient: the same gradient, fewer bytes kept for backward."""

from __future__ import annotations

import pytest
import torch

from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.relax import WordMixture
from dpo_diff.shortcut import SavedTensorBytes
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


# Euler: its scale_model_input reads a step index that scheduler.step advances, so recomputation in backward must
# see the scheduler as it was (K = 2 recomputes a call made before a step).
@pytest.mark.parametrize("scheduler, grad_steps", [("ddim", 1), ("euler", 2)])
def test_checkpointing_gives_the_same_gradient_and_keeps_less(tiny_sd, judge, scheduler, grad_steps):
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    backend = StableDiffusionBackend.from_pretrained(tiny_sd, scheduler=scheduler)
    plain, plain_bytes = gradient(backend, judge, False, grad_steps)
    ckpt, ckpt_bytes = gradient(backend, judge, True, grad_steps)
    assert plain.abs().max() > 0
    torch.testing.assert_close(ckpt, plain, atol=1e-6, rtol=1e-5)
    print(f"saved for backward: {plain_bytes / 2**20:.2f} MB plain, {ckpt_bytes / 2**20:.2f} MB checkpointed")
    assert ckpt_bytes < 0.5 * plain_bytes
    assert "guided_prediction" not in backend.__dict__  # the wrapper is removed afterwards


def test_checkpointing_on_sdxl(tiny_sdxl, judge):
    from dpo_diff.backends.sdxl import StableDiffusionXLBackend

    backend = StableDiffusionXLBackend.from_pretrained(tiny_sdxl, scheduler="model")
    plain, plain_bytes = gradient(backend, judge, False, 2)
    ckpt, ckpt_bytes = gradient(backend, judge, True, 2)
    torch.testing.assert_close(ckpt, plain, atol=1e-6, rtol=1e-5)
    assert ckpt_bytes < 0.5 * plain_bytes
