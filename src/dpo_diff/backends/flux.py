"""FLUX.1 backend (dev and schnell): a rectified-flow transformer over T5 hidden states and a pooled CLIP vector.

FLUX.1-dev is guidance-distilled: the guidance scale goes into the transformer as an embedding (``embedded_guidance``,
the pipeline's ``guidance_scale``, 3.5 by default) and there is no negative prompt. FLUX.1-schnell is distilled to
few steps (no guidance embedding). Negative prompts, and so DPO-Diff's *improve* task (a negative-prompt space), need
**true classifier-free guidance**: a second transformer call with the negative prompt, combined as
``v_neg + s (v - v_neg)`` (``FluxPipeline``'s ``true_cfg_scale``). Here the project-wide ``guidance_scale`` (the CLI's
``--guidance``) *is* that true CFG scale: above 1 it runs true CFG, at 1 or below one call without a negative prompt
(positive-slot spaces, the *attack* task, need no CFG); a negative-slot space without true CFG is an error.

Latents stay unpacked (``[B, C, H, W]``) in our loop and are packed into 2x2 patches inside each transformer call,
which keeps the loop the shared one (:mod:`~dpo_diff.backends.flow`): the scheduler's step is elementwise, so this
equals the pipeline's packed loop. The timestep shift depends on the resolution as the pipeline computes it.
"""

from __future__ import annotations

import numpy as np
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

__all__ = ["FluxBackend", "SCHEDULERS"]

MAX_SEQUENCE_LENGTH = 512
"""T5 tokens per prompt: ``FluxPipeline``'s default (and largest) ``max_sequence_length``."""
EMBEDDED_GUIDANCE = 3.5
"""FLUX.1-dev's distilled guidance (``FluxPipeline``'s default ``guidance_scale``); unused by schnell."""


class FluxBackend(FlowMatchingBackend):
    """A frozen FLUX.1 model. Build it with :meth:`from_pretrained`; only the word-mixture logits are trained."""

    # FluxPipeline's steps and true_cfg_scale 1 (one transformer call per step); a negative prompt (improve) needs
    # true CFG (> 1), for which the pipeline has no default: the CLI takes a moderate 4.0 there
    DEFAULTS = {"steps": 28, "guidance": 1.0, "negative_guidance": 4.0}

    batched_cfg = False  # the pipeline runs true CFG as a second call
    negative_needs = "true classifier-free guidance: guidance_scale > 1 (FluxPipeline's true_cfg_scale)"

    def __init__(self, tokenizers, text_encoders, transformer, vae, scheduler, *,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH, embedded_guidance: float = EMBEDDED_GUIDANCE,
                 **kwargs) -> None:
        if len(tokenizers) != 2 or len(text_encoders) != 2:
            raise ValueError(f"FLUX needs 2 tokenizers and 2 text encoders (CLIP, T5), got {len(tokenizers)} and "
                             f"{len(text_encoders)}")
        check_max_sequence_length(max_sequence_length)
        device = torch.device(kwargs.get("device", "cpu"))
        views: list[TextView] = [
            ClipView(tokenizers[0], text_encoders[0], device=device, name="CLIP"),
            T5View(tokenizers[1], text_encoders[1], device=device, max_length=max_sequence_length, name="T5"),
        ]
        super().__init__(transformer, vae, scheduler, views, **kwargs)
        self.max_sequence_length = max_sequence_length
        self.embedded_guidance = float(embedded_guidance)
        self.guidance_embeds = bool(transformer.config.guidance_embeds)
        # The pipeline's default is 128 latent pixels x the VAE factor (1024 px); the VAE's sample_size says the
        # same for the real models and keeps tiny test models tiny.
        self.default_size = int(getattr(vae.config, "sample_size", 0) or 128 * self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, model: str, *, device: str | torch.device = "cpu", dtype: str | None = None,
                        scheduler: str = "ddim", max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        embedded_guidance: float = EMBEDDED_GUIDANCE) -> FluxBackend:
        """Load a diffusers FLUX.1 folder or hub id (e.g. ``black-forest-labs/FLUX.1-dev``).

        Args:
            dtype: ``fp32``, ``fp16`` or ``bf16``; ``None``: bf16 on CUDA, fp32 elsewhere.
            scheduler: ``ddim``/``euler`` (flow-matching Euler, the model's) or ``model``; Heun has no
                resolution-dependent shift.
            embedded_guidance: the dev model's distilled guidance (ignored by schnell).
        """
        from diffusers import FluxPipeline

        torch_dtype = resolve_dtype(dtype, device)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
        pipe = load_components(FluxPipeline, model, "FLUX model", torch_dtype)
        return cls([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], pipe.transformer,
                   pipe.vae, pipe.scheduler, device=device, dtype=torch_dtype, scheduler_name=scheduler, source=model,
                   max_sequence_length=max_sequence_length, embedded_guidance=embedded_guidance)

    def generate(self, prompts, negative_prompts, seeds, *, steps: int = 28, guidance_scale: float = 1.0,
                 height: int | None = None, width: int | None = None) -> Tensor:
        """Images for exact prompt texts; a negative prompt needs true CFG (``guidance_scale > 1``): FLUX.1 would
        silently ignore it, so a search over negative prompts would compare identical images."""
        given = next((n for n in negative_prompts if n.strip()), None)
        if given is not None and not guidance_scale > 1:
            raise ValueError(f"negative prompt {given[:60]!r} given with guidance_scale {guidance_scale}: FLUX.1 is "
                             f"guidance-distilled and uses negative prompts only with {self.negative_needs}")
        return super().generate(prompts, negative_prompts, seeds, steps=steps, guidance_scale=guidance_scale,
                                height=height, width=width)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        step = self.vae_scale_factor * 2  # latents are packed into 2x2 patches
        if height % step or width % step:
            raise ValueError(f"height/width {height}x{width} must be multiples of {step}")
        return (self.transformer.config.in_channels // 4, height // self.vae_scale_factor,
                width // self.vae_scale_factor)

    def _combine(self, outputs: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
        """T5's hidden states are the sequence; CLIP gives only the pooled vector."""
        (_, pooled), (t5, _) = outputs
        rows = max(pooled.shape[0], t5.shape[0])
        return t5.expand(rows, -1, -1).to(self.dtype), pooled.expand(rows, -1).to(self.dtype)

    def _velocity(self, latents: Tensor, t: Tensor, hidden: Tensor, pooled: Tensor) -> Tensor:
        """One transformer call on unpacked latents ``[B, C, H, W]`` (packed and unpacked around the call)."""
        b, c, h, w = latents.shape
        packed = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3)
        img_ids[..., 1] += torch.arange(h // 2)[:, None]
        img_ids[..., 2] += torch.arange(w // 2)[None, :]
        img_ids = img_ids.reshape(-1, 3).to(self.device, latents.dtype)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=self.device, dtype=hidden.dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([1], self.embedded_guidance, device=self.device, dtype=torch.float32).expand(b)
        timestep = t.expand(b).to(latents.dtype)
        out = self.transformer(hidden_states=packed, timestep=timestep / 1000, guidance=guidance,
                               pooled_projections=pooled, encoder_hidden_states=hidden, txt_ids=txt_ids,
                               img_ids=img_ids, return_dict=False)[0]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def _timestep_kwargs(self, scheduler, num_steps: int, height: int, width: int) -> dict:
        """As ``FluxPipeline``: sigmas from 1 to 1/n and ``mu`` from the number of packed image tokens (used where
        the scheduler shifts by resolution: dev's config; schnell's uses a fixed shift)."""
        if not hasattr(scheduler, "time_shift"):  # a scheduler without custom sigmas or mu (none ships for FLUX)
            return {}
        tokens = (height // self.vae_scale_factor // 2) * (width // self.vae_scale_factor // 2)
        return {"sigmas": np.linspace(1.0, 1 / num_steps, num_steps), "mu": calculate_shift(tokens, scheduler.config,
                                                                                               1.15)}
