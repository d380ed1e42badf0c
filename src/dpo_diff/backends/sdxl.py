"""Stable Diffusion XL backend: two CLIP text encoders, a pooled text vector and size conditioning.

As ``StableDiffusionXLPipeline`` does: each prompt goes through both CLIP encoders, whose penultimate hidden states
are concatenated (``Tensor[B, 77, D1 + D2]``); the second encoder's projected EOS output is the pooled vector; the
UNet also takes ``add_time_ids`` = (original size, crop top-left (0, 0), target size). An empty negative prompt is
*no* negative prompt: with ``force_zeros_for_empty_prompt`` (SDXL base) its embeddings and pooled vector are zeros,
exactly what the pipeline does when called without one. With hard prompts :meth:`generate` reproduces the pipeline's
images (tested); the invisible watermark is not applied.

For the shortcut text gradient the word mixtures go through **both** encoders, each with its own tokenizer's slot
positions (:mod:`dpo_diff.relax`). The pooled vector under a mixture is the projection of the final-layer-normed
hidden states averaged over where EOS lands (the projection is linear), so it is exact at one-hot corners. SDXL's
VAE overflows in fp16: with ``force_upcast`` it decodes in fp32. Its text gradient underflows to exactly 0 in fp16
(measured with random weights), so ``dtype=None`` picks bf16 on CUDA; forced fp16 is loss-scaled by GPO.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dpo_diff.backends.base import Conditioning, check_rows
from dpo_diff.backends.diffusers_sd import (
    DTYPES,
    StableDiffusionBackend,
    by_chunk_count,
    key_mask_kwargs,
    load_settings,
)
from dpo_diff.backends.text import TextView
from dpo_diff.loading import ModelNotFoundError, resolve_model

__all__ = ["StableDiffusionXLBackend"]


def _unless_empty(hidden: Tensor, pooled: Tensor, weights: Tensor,
                  empty: dict[int, list[int]]) -> tuple[Tensor, Tensor]:
    """Scale a relaxed negative side by 1 - q, q = the probability that every negative slot picks one of its
    ``empty`` options (slot -> options): the pipeline's zeros where the negative prompt renders empty."""
    w = weights.to(hidden.device, torch.float32)
    q = torch.stack([w[..., i, opts].sum(-1) for i, opts in empty.items()], -1).prod(-1)
    keep = (1 - q).reshape(-1)
    return hidden * keep[:, None, None].to(hidden.dtype), pooled * keep[:, None].to(pooled.dtype)


class StableDiffusionXLBackend(StableDiffusionBackend):
    """A frozen SDXL base model. Build it with :meth:`from_pretrained`; the diffusion loop, x0 jump and schedulers
    are :class:`~dpo_diff.backends.diffusers_sd.StableDiffusionBackend`'s."""

    DEFAULTS = {"steps": 50, "guidance": 5.0}  # StableDiffusionXLPipeline's (the CLI's defaults for SDXL)

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2, unet, vae, scheduler, *,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 scheduler_name: str = "ddim", source: str = "", force_zeros_for_empty_prompt: bool = True) -> None:
        if getattr(unet.config, "addition_embed_type", None) != "text_time":
            raise ValueError(f"an SDXL UNet takes addition_embed_type 'text_time', this one has "
                             f"{getattr(unet.config, 'addition_embed_type', None)!r}")
        super().__init__(tokenizer, text_encoder, unet, vae, scheduler, device=device, dtype=dtype,
                         scheduler_name=scheduler_name, source=source)
        text_encoder_2.requires_grad_(False)
        text_encoder_2.eval()
        text_encoder_2.to(self.device, dtype)
        self.text_2 = TextView(tokenizer_2, text_encoder_2, device=self.device, name="text encoder 2", chunks=True)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        # The pipeline upcasts the VAE for fp16 decoding when its config says it overflows (SDXL's does).
        self.vae_dtype = torch.float32 if dtype == torch.float16 and vae.config.force_upcast else dtype
        vae.to(self.vae_dtype)

    @classmethod
    def from_pretrained(cls, model: str, *, device: str | torch.device = "cpu", dtype: str | None = None,
                        scheduler: str = "ddim") -> StableDiffusionXLBackend:
        """Load a diffusers SDXL folder or hub id (e.g. ``stabilityai/stable-diffusion-xl-base-1.0``).

        Args:
            dtype: one of ``fp32``, ``fp16``, ``bf16``; ``None``: bf16 on CUDA (fp16 underflows the text gradient),
                fp32 elsewhere.
            scheduler: one of :data:`~dpo_diff.backends.diffusers_sd.SCHEDULERS` (``model``: SDXL's Euler).
        """
        dtype = load_settings(device, dtype, scheduler, cuda_dtype="bf16")
        from diffusers import StableDiffusionXLPipeline

        path, local_only = resolve_model(model, "Stable Diffusion XL model", "model_index.json")
        try:
            pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=local_only, add_watermarker=False)
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"could not load Stable Diffusion XL model {model!r}: {e}") from e
        if pipe.text_encoder is None or pipe.text_encoder_2 is None:
            raise ValueError(f"{model!r} lacks one of SDXL's two text encoders (a refiner?); use an SDXL base model")
        return cls(pipe.tokenizer, pipe.text_encoder, pipe.tokenizer_2, pipe.text_encoder_2, pipe.unet, pipe.vae,
                   pipe.scheduler, device=device, dtype=DTYPES[dtype], scheduler_name=scheduler, source=model,
                   force_zeros_for_empty_prompt=bool(pipe.config.force_zeros_for_empty_prompt))

    # ------------------------------------------------------------------ text
    def text_views(self) -> list[TextView]:
        return [self.text, self.text_2]

    def check_prompt(self, text: str) -> None:
        for view in self.text_views():
            view.check_prompt(text)

    def _encode(self, ids: tuple[Tensor, Tensor], hooks: tuple[Callable | None, Callable | None] = (None, None),
                eos: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(hidden[B, L, D1 + D2], pooled[B, P])`` for each view's ids (``[B, n * 77]``: chunks).

        ``eos[B or 1, 77]``: where EOS lands in the first chunk of view 2 under a mixture; ``None``: the encoder's
        own pooling at the true EOS of ``ids[1]``. The pooled vector is always the first chunk's.
        """
        rows = ids[0].shape[0]
        hidden = []
        for view, view_ids, hook in zip(self.text_views(), ids, hooks):
            out = view.run(view_ids, embedding_hook=hook, output_hidden_states=True)
            hidden.append(view.join_chunks(out.hidden_states[-2], rows))
        if eos is None:
            pooled = out.text_embeds.reshape(rows, -1, out.text_embeds.shape[-1])[:, 0]
        else:
            last = out.last_hidden_state  # final-layer-normed: what the encoder pools
            first = last.reshape(rows, -1, *last.shape[-2:])[:, 0]
            at_eos = (eos.to(last.device, torch.float32)[..., None] * first.float()).sum(-2)
            pooled = self.text_2.encoder.text_projection(at_eos.to(last.dtype))
        return torch.cat(hidden, -1), pooled

    def encode_prompts(self, texts: Sequence[str], chunks: int = 1) -> tuple[Tensor, Tensor]:
        """Exact ``(hidden, pooled)`` of prompt texts, as the pipeline's ``encode_prompt``."""
        return self._encode((self.text.tokenize(texts, chunks), self.text_2.tokenize(texts, chunks)))

    def encode_negatives(self, texts: Sequence[str], chunks: int = 1) -> tuple[Tensor, Tensor]:
        """Exact ``(hidden, pooled)`` of negative prompts; an empty one is zeros under
        ``force_zeros_for_empty_prompt``."""
        hidden, pooled = self.encode_prompts(texts, chunks)
        if self.force_zeros_for_empty_prompt:
            keep = torch.tensor([bool(t) for t in texts], device=hidden.device)
            hidden, pooled = hidden * keep[:, None, None], pooled * keep[:, None]
        return hidden, pooled

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.encode_prompts(texts)[0]

    def relaxed_conditioning(self, space, *, guidance_scale: float) -> Callable[[Tensor], Conditioning]:
        """``f(weights)`` -> :class:`Conditioning` (token-level and pooled) with the space's word mixtures through
        both text encoders. A side without slots is encoded once, exactly.

        With ``force_zeros_for_empty_prompt`` and no fixed negative prompt the negative side is scaled by
        ``1 - q``, q = the probability that every negative slot picks an empty option: zeros at the corner whose
        negative prompt is empty (as the pipeline), the mixture's encoding at every other corner.
        """
        from dpo_diff.relax_chunks import first_chunk_eos, key_mask, side_inputs, side_templates, template_chunks

        t1, t2 = side_templates(space, self.text), side_templates(space, self.text_2)
        n = template_chunks(t1["positive"])
        if n != template_chunks(t2["positive"]):
            raise ValueError("the two tokenizers cut the prompt into different chunk counts; shorten the prompt")
        use_cfg = guidance_scale > 1
        neg_slots = space.slots_of("negative")
        if neg_slots and not use_cfg:
            raise ValueError("the space has negative-prompt slots but guidance_scale <= 1 disables the negative "
                             "prompt; use guidance > 1")
        with torch.no_grad():
            fixed_cond = None if t1["positive"].slots else self.encode_prompts([space.prompt], n)
            fixed_uncond = (None if neg_slots or not use_cfg
                            else self.encode_negatives([space.negative_prompt.strip()], n))
        gate = {i: [o for o, text in enumerate(space.slots[i].options) if not text] for i in neg_slots}
        gated = self.force_zeros_for_empty_prompt and not space.negative_prompt.strip() and all(gate.values())

        def side(name: str, weights: Tensor) -> tuple[Tensor, Tensor]:
            (ids1, hook1), (ids2, hook2) = side_inputs(t1[name], weights), side_inputs(t2[name], weights)
            return self._encode((ids1, ids2), (hook1, hook2), eos=first_chunk_eos(t2[name], weights))

        def encode(weights: Tensor) -> Conditioning:
            cond, pooled = fixed_cond if fixed_cond is not None else side("positive", weights)
            uncond = uncond_pooled = None
            if use_cfg:
                uncond, uncond_pooled = fixed_uncond if fixed_uncond is not None else side("negative", weights)
                if fixed_uncond is None and gated:
                    uncond, uncond_pooled = _unless_empty(uncond, uncond_pooled, weights, gate)
            mask = key_mask([t1["positive"], t1["negative"]] if use_cfg else [t1["positive"]], weights)
            return Conditioning(cond, uncond, pooled, uncond_pooled, None if mask is None else mask.to(cond.device))

        return encode

    # ------------------------------------------------------------------ diffusion
    def time_ids(self, latents: Tensor, dtype: torch.dtype) -> Tensor:
        """``add_time_ids`` ``[[H, W, 0, 0, H, W]]``: original size, crop top-left, target size (the image's)."""
        h, w = (int(s) * self.vae_scale_factor for s in latents.shape[-2:])
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=latents.device)

    def unet_call(self, model_input: Tensor, t: Tensor, text: Conditioning, cfg: bool) -> Tensor:
        if text.pooled is None or (cfg and text.uncond_pooled is None):
            raise ValueError("SDXL needs pooled text vectors in the Conditioning (pooled / uncond_pooled)")
        hidden = torch.cat([text.uncond, text.cond]) if cfg else text.cond
        pooled = torch.cat([text.uncond_pooled, text.pooled]) if cfg else text.pooled
        time_ids = self.time_ids(model_input, hidden.dtype).expand(model_input.shape[0], -1)
        return self.unet(model_input, t, encoder_hidden_states=hidden,
                         cross_attention_kwargs=key_mask_kwargs(self.unet, text, cfg),
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}, return_dict=False)[0]

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images ``Tensor[B, 3, H, W]`` in [0, 1] (differentiable; fp32 VAE when it must upcast)."""
        cfg = self.vae.config
        latents = latents.to(self.vae_dtype)
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / cfg.scaling_factor + mean
        else:
            latents = latents / cfg.scaling_factor
        images = self.vae.decode(latents, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], negative_prompts: Sequence[str], seeds: Sequence[int], *,
                 steps: int = 50, guidance_scale: float = 5.0, height: int | None = None,
                 width: int | None = None) -> Tensor:
        """Images for exact prompt texts, one per ``(prompt, negative_prompt, seed)`` row (``""``: no negative
        prompt). Long prompts as in :meth:`StableDiffusionBackend.generate`."""
        check_rows(prompts, negative_prompts, seeds)
        use_cfg = guidance_scale > 1

        def one_group(rows: list[int], n: int) -> Tensor:
            cond, pooled = self.encode_prompts([prompts[i] for i in rows], n)
            uncond = uncond_pooled = None
            if use_cfg:
                uncond, uncond_pooled = self.encode_negatives([negative_prompts[i] for i in rows], n)
            return self.sample(Conditioning(cond, uncond, pooled, uncond_pooled), [seeds[i] for i in rows],
                               steps=steps, guidance_scale=guidance_scale, height=height, width=width)

        return by_chunk_count(self.text_views(), prompts, negative_prompts if use_cfg else None, one_group)
