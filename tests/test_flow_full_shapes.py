"""The GPU benchmark's full-size SD 3.5 medium and FLUX.1-dev shapes, run on the ``meta`` device (shapes and dtypes,
no values, no memory): one GPO iteration's forward and backward through every text encoder, the transformer and the
VAE at 256 px. Slow (about 30 s per backbone to build the modules); ``-m slow``."""

from __future__ import annotations

import pytest
import torch

from dpo_diff.relax import WordMixture
from dpo_diff.shortcut import shortcut_images
from dpo_diff.space import space_from_substitutes


@pytest.mark.slow
@pytest.mark.parametrize("arch, tokens, pooled", [("sd3", 77 + 256, 2048), ("flux", 512, 768)])
def test_full_size_shapes_run_one_gpo_iteration_on_meta(arch, tokens, pooled, monkeypatch):
    import dpo_diff.backends.flow as flow
    from dpo_diff.testing_flow import random_flow_backend

    backend = random_flow_backend(arch, "meta", "bf16", size="full")
    space = space_from_substitutes("a red car on a snowy road", {"car": ["truck", "van"]},
                                   {"red": ["blue", "green"], "snowy": ["sunny", "dry"]})
    weights = WordMixture(space.sizes).sample_weights(1.0, torch.Generator().manual_seed(0)).detach()
    weights = weights.to("meta").requires_grad_()  # backward cannot copy from meta back to the CPU
    text = backend.relaxed_conditioning(space, guidance_scale=4.0)(weights)
    assert text.cond.shape == text.uncond.shape == (1, tokens, 4096) and text.pooled.shape == (1, pooled)
    monkeypatch.setattr(flow, "sigma_at", lambda scheduler, i: 0.5)  # meta sigmas have no value
    images = shortcut_images(backend, text, [0], steps=4, guidance_scale=4.0, start_step=1, height=256, width=256)
    assert images.shape == (1, 3, 256, 256)
    images.sum().backward()
    assert weights.grad.shape == weights.shape
