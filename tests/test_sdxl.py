"""Stable Diffusion XL against the diffusers pipeline (tiny random SDXL saved and loaded through from_pretrained):
images, x0 jumps, relaxed corners (token-level and pooled, both text encoders, both sides), gradients, memory."""

from __future__ import annotations

import pytest
import torch

from dpo_diff.backends.base import Conditioning
from dpo_diff.backends.sdxl import StableDiffusionXLBackend
from dpo_diff.relax import WordMixture
from dpo_diff.relax_gaps import _side_corners, corner_gaps
from dpo_diff.shortcut import SavedTensorBytes, shortcut_images
from dpo_diff.space import SearchSpace, space_from_substitutes
from dpo_diff.testing import record_scheduler_steps

PROMPT, NEGATIVE, SEED, STEPS = "a red dog", "blurry", 3, 5
SPACE = space_from_substitutes(
    "a Red dog on green grass",
    {"dog": ["golden retriever", "cat"], "grass": ["sand"]},
    {"red": ["blue", "light blue"], "green": ["sea-green"]},
)


@pytest.fixture(scope="module")
def xl(tiny_sdxl) -> StableDiffusionXLBackend:
    return StableDiffusionXLBackend.from_pretrained(tiny_sdxl)


@pytest.fixture(scope="module")
def xl_pipe(tiny_sdxl):
    """The diffusers pipeline of the same folder; tests give it their backend's scheduler."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler", ["model", "ddim"])  # SDXL's own Euler, and DDIM from its config
def test_own_loop_reproduces_the_sdxl_pipeline(tiny_sdxl, xl_pipe, scheduler):
    backend = StableDiffusionXLBackend.from_pretrained(tiny_sdxl, scheduler=scheduler)
    assert type(backend.text_2.encoder).__name__ == "CLIPTextModelWithProjection"
    pipe = xl_pipe
    pipe.scheduler = backend.new_scheduler()
    # (our negative prompt, the pipeline's, guidance): "" is no negative prompt (zeros: force_zeros_for_empty_prompt)
    for ours_neg, pipe_neg, g in ((NEGATIVE, NEGATIVE, 5.0), ("", None, 5.0), ("", None, 1.0)):
        gens = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(7)]
        ref = pipe(PROMPT, negative_prompt=pipe_neg, num_inference_steps=STEPS, guidance_scale=g, generator=gens,
                   num_images_per_prompt=2, output_type="pt").images
        ours = backend.generate([PROMPT] * 2, [ours_neg] * 2, [3, 7], steps=STEPS, guidance_scale=g)
        assert ours.shape == ref.shape == (2, 3, 16, 16)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        assert (ours[0] - ours[1]).abs().max() > 1e-3
    # A row with and a row without a negative prompt in one batch: each as in its own pipeline call.
    mixed = backend.generate([PROMPT] * 2, [NEGATIVE, ""], [3, 3], steps=STEPS, guidance_scale=5.0)
    ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator().manual_seed(3),
               output_type="pt").images
    torch.testing.assert_close(mixed[1:], ref, atol=1e-5, rtol=0)


def test_empty_negative_prompt_without_force_zeros_encodes_the_empty_text(tiny_sdxl, xl_pipe):
    backend = StableDiffusionXLBackend.from_pretrained(tiny_sdxl, scheduler="model")
    backend.force_zeros_for_empty_prompt = False
    xl_pipe.scheduler = backend.new_scheduler()
    xl_pipe.register_to_config(force_zeros_for_empty_prompt=False)
    try:
        ref = xl_pipe(PROMPT, num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(1),
                      output_type="pt").images
    finally:
        xl_pipe.register_to_config(force_zeros_for_empty_prompt=True)
    torch.testing.assert_close(backend.generate([PROMPT], [""], [1], steps=3, guidance_scale=5.0), ref, atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("scheduler", ["model", "ddim"])
def test_x0_jump_equals_the_schedulers_pred_original_sample(tiny_sdxl, xl_pipe, scheduler):
    """The decoded x0 jump after k no-grad and K grad steps is the decoded ``pred_original_sample`` of the
    pipeline's step k + K - 1 (with the pooled vectors and add_time_ids)."""
    backend = StableDiffusionXLBackend.from_pretrained(tiny_sdxl, scheduler=scheduler)
    pipe = xl_pipe
    pipe.scheduler = backend.new_scheduler()
    _, x0 = record_scheduler_steps(pipe.scheduler)
    pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=5.0,
         generator=torch.Generator().manual_seed(SEED), output_type="latent")
    cond, pooled = backend.encode_prompts([PROMPT])
    uncond, uncond_pooled = backend.encode_negatives([NEGATIVE])
    text = Conditioning(cond, uncond, pooled, uncond_pooled)
    for k, grad_steps in ((0, 1), (2, 1), (2, 2), (STEPS - 1, 1)):
        images = shortcut_images(backend, text, [SEED], steps=STEPS, guidance_scale=5.0, start_step=k,
                                 grad_steps=grad_steps)
        with torch.no_grad():
            ref = backend.decode(x0[k + grad_steps - 1]).float()
        torch.testing.assert_close(images.detach(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("negative_prompt", ["", "blurry."])
def test_relaxed_conditioning_is_exact_at_every_corner(xl, negative_prompt):
    """Token-level embeddings of both encoders and the pooled vector, both sides, at every one-hot corner, equal the
    exact encoding of the rendered text; an empty rendered negative prompt gives the pipeline's zeros."""
    space = SearchSpace(SPACE.prompt, SPACE.slots, negative_prompt)
    encode = xl.relaxed_conditioning(space, guidance_scale=5.0)
    mix = WordMixture(space.sizes)
    seen_zero = False
    for side in ("positive", "negative"):
        for c in _side_corners(space, side, 1000, 0)[0]:  # every corner of the side
            pair = space.render(c)
            with torch.no_grad():
                got = encode(mix.one_hot(c))
                cond, pooled = xl.encode_prompts([pair.prompt])
                uncond, uncond_pooled = xl.encode_negatives([pair.negative_prompt])
            for name, a, b in (("cond", got.cond, cond), ("pooled", got.pooled, pooled),
                               ("uncond", got.uncond, uncond), ("uncond_pooled", got.uncond_pooled, uncond_pooled)):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} at {pair}: {m}")
            seen_zero |= not pair.negative_prompt and bool(uncond.abs().max() == 0)
    assert seen_zero == (negative_prompt == "")


def test_corner_gaps_cover_both_text_encoders(xl):
    gaps = corner_gaps(SPACE, xl)
    assert [(g.encoder, g.side) for g in gaps] == [("text encoder", "positive"), ("text encoder", "negative"),
                                                      ("text encoder 2", "positive"), ("text encoder 2", "negative")]
    assert all(g.max_abs == 0.0 and g.token_mismatches == 0 and g.corners == g.total for g in gaps), gaps


def test_gradients_reach_every_slot_through_every_text_encoder(xl):
    """Each encoder's token-level part and the pooled vector depend on every option of every slot of its side."""
    encode = xl.relaxed_conditioning(SPACE, guidance_scale=5.0)
    width = xl.text.encoder.config.hidden_size
    mix = WordMixture(SPACE.sizes)
    parts = {
        "positive": {"encoder 1": lambda t: t.cond[..., :width], "encoder 2": lambda t: t.cond[..., width:],
                     "pooled": lambda t: t.pooled},
        "negative": {"encoder 1": lambda t: t.uncond[..., :width], "encoder 2": lambda t: t.uncond[..., width:],
                     "pooled": lambda t: t.uncond_pooled},
    }
    for side, pick in parts.items():
        for name, part in pick.items():
            w = mix.sample_weights(1.0, torch.Generator().manual_seed(0)).requires_grad_()
            (grad,) = torch.autograd.grad(part(encode(w)).pow(2).sum(), w)
            for i in SPACE.slots_of(side):
                assert (grad[i, : SPACE.sizes[i]] != 0).all(), (side, name, i, grad[i])


def test_shortcut_gradient_reaches_every_slot(xl, judge):
    from dpo_diff.problem import Problem, SamplingConfig, Task

    problem = Problem(SPACE, Task("improve"), xl, judge, SamplingConfig(steps=4, guidance_scale=5.0))
    mix = WordMixture(SPACE.sizes)
    w = mix.sample_weights(1.0, torch.Generator().manual_seed(0))
    problem.relaxation()(w, (0, 1), start_step=1, grad_steps=1).sum().backward()
    grad = mix.logits.grad
    assert torch.isfinite(grad).all()
    assert all(grad[i, :n].abs().max() > 0 for i, n in enumerate(SPACE.sizes))


def test_shortcut_memory_is_flat_in_the_number_of_steps(xl, judge):
    from dpo_diff.problem import Problem, SamplingConfig, Task

    saved = {}
    for steps in (4, 16):
        problem = Problem(SPACE, Task("improve"), xl, judge, SamplingConfig(steps=steps, guidance_scale=5.0))
        w = WordMixture(SPACE.sizes).sample_weights(1.0, torch.Generator().manual_seed(0))
        with SavedTensorBytes() as counter:
            loss = problem.relaxation()(w, (0,), start_step=steps // 2, grad_steps=1).sum()
        loss.backward()
        saved[steps] = counter.bytes
    assert saved[4] > 0 and saved[16] <= 1.05 * saved[4], saved


def test_dtype_auto_and_load_backend(tiny_sdxl, xl):
    from dpo_diff.backends.base import load_backend

    assert xl.dtype == torch.float32  # dtype None (auto) on the CPU
    assert xl.force_zeros_for_empty_prompt and xl.text_2.tokenizer.pad_token == "!"
    fp16 = load_backend(tiny_sdxl, dtype="fp16")
    assert isinstance(fp16, StableDiffusionXLBackend)
    assert fp16.dtype == torch.float16 and fp16.vae_dtype == torch.float32  # force_upcast: decode in fp32
    assert fp16.vae.dtype == torch.float32 and fp16.text_2.encoder.dtype == torch.float16


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_runs_with_an_fp32_vae_under_force_upcast(tiny_sdxl, judge, dtype):
    """fp16 keeps the VAE in fp32 (force_upcast); the relaxed loss and its (loss-scaled, as GPO does for fp16)
    gradient stay finite and non-zero, with checkpointing too."""
    from dpo_diff.backends.base import load_backend
    from dpo_diff.problem import Problem, SamplingConfig, Task

    backend = load_backend(tiny_sdxl, dtype=dtype)
    assert backend.vae.dtype == (torch.float32 if dtype == "fp16" else torch.bfloat16)
    sampling = SamplingConfig(steps=4, guidance_scale=5.0, grad_checkpointing=True)
    mix = WordMixture(SPACE.sizes)
    w = mix.sample_weights(1.0, torch.Generator().manual_seed(0))
    loss = Problem(SPACE, Task("improve"), backend, judge, sampling).relaxation()(w, (0,), start_step=1,
                                                                                  grad_steps=1)
    (loss.sum() * (1024.0 if dtype == "fp16" else 1.0)).backward()
    assert torch.isfinite(mix.logits.grad).all() and (mix.logits.grad != 0).any()
    images = backend.generate([SPACE.prompt], [""], [0], steps=3, guidance_scale=5.0)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
