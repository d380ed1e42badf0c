"""A soft cross-attention key mask for diffusers UNets: log-visibility added to the attention logits.

The relaxation of long prompts shows each chunk to cross-attention with a probability p
(:func:`dpo_diff.relax_chunks.key_mask`). diffusers' ``encoder_attention_mask`` cannot carry that in fp16/bf16: the
UNet casts the mask to the model's dtype before turning it into the bias ``-10000 (1 - m)``, so any encoding of log p
as ``m = 1 + log(p) / 10000`` rounds to m = 1 (bias 0, fully visible) for p above ~0.02 in fp16 and any p > 0 in
bf16. Instead :class:`KeyBiasProcessor` wraps each attention processor of the UNet and adds the bias, computed in fp32
as log p (-10000 for p = 0: hidden, as diffusers' own masks), to the cross-attention logits. The bias is then rounded
to the compute dtype, relatively (log 0.5 stays -0.69). It travels in ``cross_attention_kwargs``, as an argument, so
gradient checkpointing's recomputation in backward sees it too.
"""

from __future__ import annotations

import torch
from torch import Tensor

HIDDEN = -1e4
"""The bias of an invisible key (diffusers' own masks use -10000: exp underflows to exactly 0)."""


def key_bias(visibility: Tensor) -> Tensor:
    """``log p`` in fp32, at least :data:`HIDDEN` (p = 0: hidden; p = 1: 0, fully visible)."""
    return visibility.float().clamp_min(0).log().clamp_min(HIDDEN)


class KeyBiasProcessor:
    """Runs the wrapped attention processor with ``key_bias[B, keys]`` (from ``cross_attention_kwargs``) added to
    the attention mask of cross-attention calls; self-attention and calls without a bias run unchanged."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, key_bias: Tensor | None = None, **kwargs) -> Tensor:
        if key_bias is not None and encoder_hidden_states is not None:
            # [B, 1, keys], as the UNet shapes its encoder mask; SDPA wants the mask in the query's dtype
            bias = key_bias[:, None, :].to(hidden_states.device, hidden_states.dtype)
            attention_mask = bias if attention_mask is None else attention_mask + bias
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, **kwargs)


def install(unet: torch.nn.Module) -> None:
    """Wrap every attention processor of ``unet`` that is not wrapped yet (all of them: an unwrapped self-attention
    processor would warn about the unexpected ``key_bias`` argument on every call). Idempotent; call it before each
    biased UNet call, since a user's ``set_attn_processor`` replaces the wrappers."""
    procs = unet.attn_processors
    if all(isinstance(p, KeyBiasProcessor) for p in procs.values()):
        return
    unet.set_attn_processor({name: p if isinstance(p, KeyBiasProcessor) else KeyBiasProcessor(p)
                             for name, p in procs.items()})
