"""SD 3.x and FLUX.1 backends against diffusers' own pipelines and schedulers, on tiny models loaded through
``from_pretrained``: the own denoising loop reproduces the pipelines' images (fp32, <= 1e-5), the shortcut's prefix
and x0 jump equal the pipeline's latents and the scheduler's own Euler step to sigma = 0, and loading is checked.

Schedulers: SD 3 with flow-matching Euler and Heun (Heun has no resolution-dependent shift, so the FLUX pipeline
cannot take it); FLUX with Euler twice, dev-style (guidance embedding, resolution-dependent shift) and schnell-style
(neither).
"""

from __future__ import annotations

import pytest
import torch

from dpo_diff.backends.base import Conditioning, load_backend
from dpo_diff.shortcut import shortcut_images

PROMPT, NEGATIVE = "a red dog, on grass", "blurry"


def _pipeline(path: str, backend):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = FluxPipeline if type(backend).__name__ == "FluxBackend" else StableDiffusion3Pipeline
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = backend.new_scheduler()
    return pipe


def _call(pipe, backend, guidance: float, **kw):
    """The pipeline call that matches ``backend.generate(..., guidance_scale=guidance)``: FLUX's true CFG is the
    pipeline's ``true_cfg_scale`` (its ``guidance_scale`` is the distilled embedding)."""
    if type(backend).__name__ == "FluxBackend":
        return pipe(true_cfg_scale=guidance, guidance_scale=backend.embedded_guidance, **kw).images
    return pipe(guidance_scale=guidance, **kw).images


CASES = [("tiny_sd3", "euler"), ("tiny_sd3", "heun"), ("tiny_flux", "euler"), ("tiny_flux_schnell", "model")]


@pytest.mark.parametrize("which, scheduler", CASES)
def test_own_loop_reproduces_the_pipeline(which, scheduler, request):
    path = request.getfixturevalue(which)
    backend = load_backend(path, scheduler=scheduler)
    pipe = _pipeline(path, backend)
    gens = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(7)]
    ref = _call(pipe, backend, 4.0, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, generator=gens,
                num_images_per_prompt=2, output_type="pt", height=16, width=16)
    ours = backend.generate([PROMPT] * 2, [NEGATIVE] * 2, [3, 7], steps=4, guidance_scale=4.0, height=16, width=16)
    assert ours.shape == ref.shape == (2, 3, 16, 16)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert (ours[0] - ours[1]).abs().max() > 1e-3
    # Without guidance (no negative prompt), at a non-square size (the shift depends on it).
    ref1 = _call(pipe, backend, 1.0, prompt=PROMPT, num_inference_steps=3, output_type="pt", height=16, width=32,
                 generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(backend.generate([PROMPT], [""], [5], steps=3, guidance_scale=1.0, height=16, width=32),
                               ref1, atol=1e-5, rtol=0)


def _trace(pipe, backend, steps: int, seed: int):
    """Latents entering each scheduler step of the pipeline (unpacked for FLUX), and its final latents."""
    entering = []
    step = pipe.scheduler.step

    def recording_step(model_output, timestep, sample, *args, **kwargs):
        entering.append(sample.clone())
        return step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = recording_step
    final = _call(pipe, backend, 4.0, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                  generator=torch.Generator().manual_seed(seed), output_type="latent", height=16, width=16)
    entering.append(final)
    if type(backend).__name__ == "FluxBackend":
        entering = [pipe._unpack_latents(x, 16, 16, pipe.vae_scale_factor) for x in entering]
    return entering


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_shortcut_prefix_and_x0_jump_equal_the_pipeline(which, request):
    """The latents entering the grad steps are the pipeline's after k steps; the x0 jump from the last step's
    velocity equals the pipeline's last Euler step (sigma -> 0), i.e. its final latents."""
    path = request.getfixturevalue(which)
    backend = load_backend(path)
    steps, seed = 4, 3
    entering = _trace(_pipeline(path, backend), backend, steps, seed)
    cond, pooled = backend.encode_text([PROMPT])
    uncond, uncond_pooled = backend.encode_text([NEGATIVE])
    text = Conditioning(cond, uncond, pooled, uncond_pooled)
    for k, grad_steps in ((0, 1), (1, 2), (steps - 1, 1)):
        seen = []
        guided = backend.guided_prediction

        def spy(sched, latents, t, text_, g, _guided=guided, _seen=seen):
            if torch.is_grad_enabled():
                _seen.append(latents.detach().clone())
            return _guided(sched, latents, t, text_, g)

        backend.guided_prediction = spy
        try:
            images = shortcut_images(backend, text, [seed], steps=steps, guidance_scale=4.0, start_step=k,
                                     grad_steps=grad_steps, height=16, width=16)
        finally:
            del backend.guided_prediction
        for j, latents in enumerate(seen):
            torch.testing.assert_close(latents, entering[k + j], atol=1e-5, rtol=0)
        if k + grad_steps == steps:  # the jump from the last step is the scheduler's own last step
            with torch.no_grad():
                torch.testing.assert_close(images.detach(), backend.decode(entering[-1]).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_x0_from_velocity_inverts_the_schedulers_noising(which, request):
    """x_t = scheduler.scale_noise(x0, t, noise) and v = noise - x0 (the rectified-flow target) give back x0 at every
    step of the schedule, and one Euler step of the scheduler from sigma to 0 lands on the same x0."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    backend = load_backend(request.getfixturevalue(which))
    sched = backend.new_scheduler(6, 16, 16)
    sched._begin_index = None  # scale_noise looks sigma up by timestep only without the loop's begin index
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(sched.timesteps):
        x_t = sched.scale_noise(x0, t[None], noise)
        torch.testing.assert_close(backend.x0_estimate(sched, noise - x0, x_t, i), x0, atol=1e-5, rtol=1e-5)
        last = FlowMatchEulerDiscreteScheduler()
        last.set_timesteps(sigmas=[float(sched.sigmas[i])])  # sigmas [sigma, 0]: one step to the end
        last.sigmas = torch.tensor([float(sched.sigmas[i]), 0.0])
        stepped = last.step(noise - x0, last.timesteps[0], x_t, return_dict=False)[0]
        torch.testing.assert_close(stepped, x0, atol=1e-5, rtol=1e-5)


def test_flux_shift_depends_on_resolution_as_the_pipeline(tiny_flux, tiny_flux_schnell):
    dev, schnell = load_backend(tiny_flux), load_backend(tiny_flux_schnell)
    small, large = dev.new_scheduler(4, 16, 16).sigmas, dev.new_scheduler(4, 32, 32).sigmas
    assert (large[1:-1] > small[1:-1]).all()  # more image tokens, more shift toward noise
    torch.testing.assert_close(schnell.new_scheduler(4, 16, 16).sigmas, schnell.new_scheduler(4, 32, 32).sigmas)
    assert dev.guidance_embeds and not schnell.guidance_embeds


def test_loading(tiny_sd3, tiny_flux):
    sd3, flux = load_backend(tiny_sd3), load_backend(tiny_flux, dtype="auto")
    assert (type(sd3).__name__, type(flux).__name__) == ("StableDiffusion3Backend", "FluxBackend")
    assert sd3.dtype == flux.dtype == torch.float32  # auto on CPU (bf16 on CUDA)
    assert [v.name for v in sd3.text_views()] == ["CLIP-L", "CLIP-G", "T5"]
    assert [v.max_length for v in flux.text_views()] == [77, 512] and sd3.text_views()[2].max_length == 256
    modules = [sd3.transformer, sd3.vae, *(v.encoder for v in sd3.views)]
    assert not any(p.requires_grad for m in modules for p in m.parameters())
    assert not any(m.training for m in modules)
    with pytest.raises(ValueError, match="unknown scheduler 'pndm'.*euler"):
        load_backend(tiny_sd3, scheduler="pndm")
    with pytest.raises(ValueError, match="'heun' has no resolution-dependent shift"):
        load_backend(tiny_flux, scheduler="heun")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_backend(tiny_flux, dtype="int8")
