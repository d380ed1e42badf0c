"""Stable Diffusion 3.x backend (SD 3 medium, SD 3.5 medium/large): an MMDiT over CLIP-L, CLIP-G and T5 text.

The conditioning is built as ``StableDiffusion3Pipeline.encode_prompt`` builds it: the two CLIPs' penultimate hidden
states side by side, zero-padded to T5's width, then T5's hidden states after them in the sequence; the pooled
vector is the two CLIPs' projected EOS states side by side. The shortcut text gradient mixes each slot's options in
*all three* encoders (T5 through its own SentencePiece positions, multi-piece options kept; see
:mod:`dpo_diff.relax`). Sampling is flow matching (:mod:`~dpo_diff.backends.flow`): x0 = x_t - sigma v; negative
prompts by classifier-free guidance (``guidance_scale > 1``), as the pipeline does. Our own loop reproduces the
pipeline's images (tested on a tiny model with Euler and Heun).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpo_diff.backends.flow import (
    SCHEDULERS,
    ClipView,
    FlowMatchingBackend,
    T5View,
    calculate_shift,
    check_max_sequence_length,
    load_components,
    resolve_dtype,
)
from dpo_diff.backends.text import TextView

__all__ = ["SCHEDULERS", "StableDiffusion3Backend"]

MAX_SEQUENCE_LENGTH = 256
"""T5 tokens per prompt: ``StableDiffusion3Pipeline``'s default ``max_sequence_length`` (it allows up to 512)."""


class StableDiffusion3Backend(FlowMatchingBackend):
    """A frozen SD 3.x model. Build it with :meth:`from_pretrained`; only the word-mixture logits are trained."""

    DEFAULTS = {"steps": 28, "guidance": 7.0}  # StableDiffusion3Pipeline's (the CLI's defaults for SD 3)

    def __init__(self, tokenizers, text_encoders, transformer, vae, scheduler, *,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH, **kwargs) -> None:
        if len(tokenizers) != 3 or len(text_encoders) != 3:
            raise ValueError(f"SD 3 needs 3 tokenizers and 3 text encoders (CLIP-L, CLIP-G, T5), got "
                             f"{len(tokenizers)} and {len(text_encoders)}; models saved without T5 are not supported")
        check_max_sequence_length(max_sequence_length)
        device = torch.device(kwargs.get("device", "cpu"))
        views: list[TextView] = [
            ClipView(tokenizers[0], text_encoders[0], device=device, layer=-2, name="CLIP-L"),
            ClipView(tokenizers[1], text_encoders[1], device=device, layer=-2, name="CLIP-G"),
            T5View(tokenizers[2], text_encoders[2], device=device, max_length=max_sequence_length, name="T5"),
        ]
        super().__init__(transformer, vae, scheduler, views, **kwargs)
        self.max_sequence_length = max_sequence_length
        self.patch_size = transformer.config.patch_size
        self.default_size = transformer.config.sample_size * self.vae_scale_factor  # the pipeline's default

    @classmethod
    def from_pretrained(cls, model: str, *, device: str | torch.device = "cpu", dtype: str | None = None,
                        scheduler: str = "ddim", max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        ) -> StableDiffusion3Backend:
        """Load a diffusers SD 3.x folder or hub id (e.g. ``stabilityai/stable-diffusion-3.5-medium``).

        Args:
            dtype: ``fp32``, ``fp16`` or ``bf16``; ``None``: bf16 on CUDA, fp32 elsewhere.
            scheduler: one of :data:`~dpo_diff.backends.flow.SCHEDULERS` (``ddim``/``euler``: flow-matching Euler).
        """
        from diffusers import StableDiffusion3Pipeline

        torch_dtype = resolve_dtype(dtype, device)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
        pipe = load_components(StableDiffusion3Pipeline, model, "Stable Diffusion 3 model", torch_dtype)
        toks = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
        encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
        if any(x is None for x in toks + encoders):
            raise ValueError(f"{model!r} lacks a tokenizer or text encoder (SD 3 needs CLIP-L, CLIP-G and T5)")
        return cls(toks, encoders, pipe.transformer, pipe.vae, pipe.scheduler, device=device, dtype=torch_dtype,
                   scheduler_name=scheduler, source=model, max_sequence_length=max_sequence_length)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        step = self.vae_scale_factor * self.patch_size
        if height % step or width % step:
            raise ValueError(f"height/width {height}x{width} must be multiples of {step}")
        return (self.transformer.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def _combine(self, outputs: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
        """CLIP-L and CLIP-G hidden states side by side, zero-padded to T5's width, then T5's tokens after them."""
        (h1, p1), (h2, p2), (t5, _) = outputs
        clip = torch.cat([h1, h2], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        rows = max(clip.shape[0], t5.shape[0])
        hidden = torch.cat([clip.expand(rows, -1, -1), t5.expand(rows, -1, -1)], dim=-2)
        pooled = torch.cat([p1, p2], dim=-1)
        return hidden.to(self.dtype), pooled.expand(rows, -1).to(self.dtype)

    def _velocity(self, latents: Tensor, t: Tensor, hidden: Tensor, pooled: Tensor) -> Tensor:
        return self.transformer(hidden_states=latents, timestep=t.expand(latents.shape[0]),
                                encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]

    def _timestep_kwargs(self, scheduler, num_steps: int, height: int, width: int) -> dict:
        """As ``StableDiffusion3Pipeline``: the default sigmas, and ``mu`` from the number of image patches where the
        scheduler uses the resolution-dependent shift (SD 3.5's config uses a fixed shift of 3)."""
        if not scheduler.config.get("use_dynamic_shifting", False):
            return {}
        patch = self.vae_scale_factor * self.patch_size
        tokens = (height // patch) * (width // patch)
        return {"mu": calculate_shift(tokens, scheduler.config, 1.16)}
