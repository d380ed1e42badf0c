"""What the SD backends refuse or read from the model's own configuration: an encoder that masks its padding, a
guidance-embedding (LCM) UNet, and the x0 jump of a scheduler with continuous timesteps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dpo_diff.backends.text import TextView


def test_an_encoder_that_masks_its_padding_is_refused(backend):
    """The pipelines mask the padding of such an encoder; neither the exact encoding nor the relaxation does."""
    encoder = SimpleNamespace(config=SimpleNamespace(use_attention_mask=True))
    with pytest.raises(ValueError, match=r"text encoder's config sets use_attention_mask=True .* unset or False"):
        TextView(backend.tokenizer, encoder, device=torch.device("cpu"))
    assert TextView(backend.tokenizer, SimpleNamespace(config=SimpleNamespace()), device=torch.device("cpu"))


def _with_guidance_embedding(unet):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": 8})


def test_lcm_unets_are_refused_on_sd_and_sdxl(tiny_sd, tiny_sdxl):
    """The pipelines run a UNet with a guidance embedding without CFG and with timestep_cond; ours would not."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.backends.sdxl import StableDiffusionXLBackend

    sd = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    with pytest.raises(ValueError, match=r"time_cond_proj_dim=8, e\.g\. an LCM .* time_cond_proj_dim None"):
        StableDiffusionBackend(sd.tokenizer, sd.text_encoder, _with_guidance_embedding(sd.unet), sd.vae, sd.scheduler)
    xl = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, add_watermarker=False)
    with pytest.raises(ValueError, match=r"time_cond_proj_dim=8"):
        StableDiffusionXLBackend(xl.tokenizer, xl.text_encoder, xl.tokenizer_2, xl.text_encoder_2,
                                 _with_guidance_embedding(xl.unet), xl.vae, xl.scheduler)


def test_x0_jump_with_continuous_timesteps_is_the_schedulers(tiny_sd_v):
    """Euler with ``timestep_type="continuous"`` (EDM-style v-prediction models) steps at t = log(sigma) / 4, often
    negative: the jump reads the scheduler's sigma and equals its own ``pred_original_sample`` at every step."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from dpo_diff.backends.base import Conditioning
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_v, safety_checker=None, requires_safety_checker=False)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_type="continuous")
    backend = StableDiffusionBackend(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, euler,
                                     scheduler_name="model")
    assert backend.prediction_type == "v_prediction"
    sched = backend.new_scheduler(6)
    assert (sched.timesteps < 0).any() and (sched.timesteps != sched.timesteps.round()).all()
    with torch.no_grad():
        text = Conditioning(backend.encode_text(["a red dog"]), None)
        latents = backend.initial_latents([0], sched)
        for i, t in enumerate(sched.timesteps):
            out, x_t = backend.guided_prediction(sched, latents, t, text, 1.0)
            got = backend.x0_estimate(sched, out, x_t, i)
            latents, want = sched.step(out, t, latents, return_dict=False)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
