"""The soft chunk mask of long prompts reaches the UNet's cross-attention as log p in every dtype.

diffusers rounds ``encoder_attention_mask`` to the model's dtype before making it a bias, which turned a soft
visibility p = 0.5 into bias 0 (fully visible) in fp16 and bf16; the bias now goes through our attention processors
(:mod:`dpo_diff.backends.key_bias`), computed in fp32. The same checks run on CUDA under ``-m gpu``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dpo_diff.backends.base import Conditioning
from dpo_diff.backends.key_bias import HIDDEN, KeyBiasProcessor, install, key_bias

LOW = {"fp16": (torch.float16, 2e-3), "bf16": (torch.bfloat16, 1e-2)}  # dtype, bias tolerance (relative rounding)


def test_key_bias_is_log_p_in_fp32():
    p = torch.tensor([1.0, 0.5, 1e-3, 0.0], dtype=torch.bfloat16)
    got = key_bias(p)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx([0.0, math.log(0.5), math.log(float(p[2])), HIDDEN])


def _seen_biases(backend, p: float, monkeypatch) -> list[torch.Tensor]:
    """The attention masks the UNet's cross-attention layers pass to SDPA for a two-chunk prompt whose second chunk
    is visible with probability ``p`` (one guided call: rows uncond and cond)."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, **kwargs):
        if key.shape[-2] == 2 * 77:  # cross-attention over the two chunks
            seen.append(attn_mask)
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        hidden = backend.encode_ids(backend.text.tokenize(["a red dog", ""], 2))
        mask = torch.tensor([[1.0] * 77 + [p] * 77], device=backend.device)
        text = Conditioning(hidden[:1], hidden[1:], key_mask=mask)
        sched = backend.new_scheduler(4)
        backend.guided_prediction(sched, backend.initial_latents([0], sched), sched.timesteps[1], text, 5.0)
    monkeypatch.undo()
    assert seen, "no cross-attention call over two chunks was seen"
    return seen


def check_soft_bias(tiny_sd: str, device: str, dtype: str, monkeypatch) -> None:
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    torch_dtype, tol = LOW[dtype]
    backend = StableDiffusionBackend.from_pretrained(tiny_sd, device=device, dtype=dtype)
    for p, want in ((0.5, math.log(0.5)), (0.05, math.log(0.05))):
        for bias in _seen_biases(backend, p, monkeypatch):
            assert bias.dtype == torch_dtype and bias.device.type == torch.device(device).type
            assert (bias[..., :77] == 0).all()
            torch.testing.assert_close(bias[..., 77:].float(), torch.full_like(bias[..., 77:].float(), want),
                                       atol=tol * abs(want), rtol=0)
    for bias in _seen_biases(backend, 0.0, monkeypatch):  # a hidden chunk stays hidden: exp(-10000) = 0
        assert (bias[..., 77:].float() <= 0.99 * HIDDEN).all() and (bias[..., :77] == 0).all()
    check_attention_output(backend, torch_dtype)


def check_attention_output(backend, dtype: torch.dtype) -> None:
    """One cross-attention layer in the low dtype with p = 0.5 on the second chunk matches the same layer in fp32;
    both are far from the fully visible result (what the rounded mask gave)."""
    attn = next(m for name, m in backend.unet.named_modules() if name.endswith("attn2"))
    ref_attn = copy.deepcopy(attn).float()
    assert isinstance(ref_attn.processor, KeyBiasProcessor)  # installed by the UNet calls before
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, attn.query_dim, generator=gen).to(backend.device)
    enc = torch.randn(2, 2 * 77, attn.cross_attention_dim, generator=gen).to(backend.device)
    half = key_bias(torch.tensor([[1.0] * 77 + [0.5] * 77], device=backend.device)).expand(2, -1)
    with torch.no_grad():
        got = attn(x.to(dtype), encoder_hidden_states=enc.to(dtype), key_bias=half).float()
        want = ref_attn(x, encoder_hidden_states=enc, key_bias=half)
        visible = ref_attn(x, encoder_hidden_states=enc)
    err, effect = float((got - want).abs().max()), float((visible - want).abs().max())
    assert err < effect / 5, (err, effect)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_soft_chunk_bias_survives_low_precision_on_the_cpu(tiny_sd, dtype, monkeypatch):
    check_soft_bias(tiny_sd, "cpu", dtype, monkeypatch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_soft_chunk_bias_survives_low_precision_on_cuda(tiny_sd, dtype, monkeypatch):
    check_soft_bias(tiny_sd, "cuda", dtype, monkeypatch)


def test_the_bias_reaches_the_recomputed_blocks_of_gradient_checkpointing(tiny_sd, judge):
    """Checkpointed blocks recompute in backward from their arguments; the bias is one of them, so the gradient of
    a long prompt whose second chunk is soft (p strictly between 0 and 1) is the same with and without."""
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.relax import WordMixture
    from dpo_diff.space import space_from_substitutes

    filler = " ".join(["a big red house next to a small green tree"] * 6)  # 60 tokens: "dog" can cross into chunk 2
    space = space_from_substitutes(f"{filler} with a very sunny hill by the sea and a Red dog on green grass",
                                   {"dog": ["golden retriever", "cat"]})
    backend = StableDiffusionBackend.from_pretrained(tiny_sd)
    grads = []
    for checkpointing in (False, True):
        sampling = SamplingConfig(steps=4, guidance_scale=5.0, grad_checkpointing=checkpointing)
        mix = WordMixture(space.sizes)
        w = mix.sample_weights(1.0, torch.Generator().manual_seed(0))
        mask = backend.relaxed_conditioning(space, guidance_scale=5.0)(w.detach()).key_mask
        assert mask is not None and 0 < float(mask[0, -1]) < 1
        relaxed = Problem(space, Task("improve"), backend, judge, sampling).relaxation()
        relaxed(w, (0,), start_step=1, grad_steps=1).sum().backward()
        grads.append(mix.logits.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_install_wraps_every_processor_once(backend):
    install(backend.unet)
    procs = backend.unet.attn_processors
    assert procs and all(isinstance(p, KeyBiasProcessor) for p in procs.values())
    install(backend.unet)
    assert all(not isinstance(p.inner, KeyBiasProcessor) for p in backend.unet.attn_processors.values())
