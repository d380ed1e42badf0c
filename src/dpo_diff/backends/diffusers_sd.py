"""Stable Diffusion 1.x / 2.x backend over diffusers' ``unet`` / ``scheduler`` / ``vae`` (the only diffusers user).

We run our own denoising loop instead of calling ``StableDiffusionPipeline`` because the shortcut text gradient
needs to stop after ``k`` steps, switch grad on for ``K`` steps and jump to x0. With hard prompts, :meth:`sample`
reproduces the pipeline's images exactly for the same prompt, negative prompt, seed, steps and guidance (tested).
No method sets the autograd mode: callers decide (see :mod:`dpo_diff.shortcut`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dpo_diff.backends import key_bias
from dpo_diff.backends.base import DTYPES, Conditioning, check_rows, decode_in_slices, dtype_name
from dpo_diff.backends.text import TextView
from dpo_diff.loading import ModelNotFoundError, resolve_model
from dpo_diff.seeding import latent_generator

__all__ = ["Conditioning", "DTYPES", "SCHEDULERS", "StableDiffusionBackend"]

SCHEDULERS = ("ddim", "pndm", "euler", "dpm++", "model")
"""``model`` keeps the scheduler saved with the model; the others are built from its config with ``from_config``."""


def _scheduler_class(name: str):
    import diffusers

    classes = {
        "ddim": diffusers.DDIMScheduler,
        "pndm": diffusers.PNDMScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "dpm++": diffusers.DPMSolverMultistepScheduler,
    }
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")
    return classes[name]


class StableDiffusionBackend:
    """A frozen Stable Diffusion model (1.x or 2.x; epsilon, v- or sample-prediction).

    Build it with :meth:`from_pretrained`. Weights never receive gradients: only the prompt's word-mixture logits
    are trained by the searches.
    """

    DEFAULTS = {"steps": 50, "guidance": 7.5}  # the pipeline's num_inference_steps, guidance_scale (CLI defaults)

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, scheduler_name: str = "ddim", source: str = "") -> None:
        if scheduler_name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler_name!r}; choose one of {SCHEDULERS}")
        guidance_dim = getattr(unet.config, "time_cond_proj_dim", None)
        if guidance_dim is not None:
            # The pipelines run such a UNet (an LCM distillation) without classifier-free guidance and feed it the
            # guidance scale as timestep_cond; our loop's CFG without it would give other images.
            raise ValueError(f"the UNet has a guidance embedding (time_cond_proj_dim={guidance_dim}, e.g. an LCM "
                             f"distillation), which is not supported; use a UNet with time_cond_proj_dim None")
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(
                f"scheduler {type(scheduler).__name__} has no alphas_cumprod; the one-step x0 jump needs it")
        self.unet = unet
        self.vae = vae
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source
        self._scheduler_config = scheduler.config
        self._scheduler_cls = type(scheduler) if scheduler_name == "model" else _scheduler_class(scheduler_name)
        self.scheduler_name = scheduler_name
        for module in (text_encoder, unet, vae):
            module.requires_grad_(False)
            module.eval()
            module.to(self.device, dtype)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        sample_size = unet.config.sample_size
        sample_size = sample_size if isinstance(sample_size, int) else sample_size[0]
        self.default_size = sample_size * self.vae_scale_factor
        self.prediction_type = self.new_scheduler().config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.text = TextView(tokenizer, text_encoder, device=self.device, chunks=True)
        self.block_checkpointing = False

    def set_block_checkpointing(self, enabled: bool) -> None:
        """Per-block gradient checkpointing of the UNet and the VAE decoder (diffusers' own; it acts in grad mode
        only): a grad-enabled call keeps each block's inputs and recomputes the block in backward. Turned on by
        :func:`~dpo_diff.shortcut.shortcut_images` with ``checkpointing=True``."""
        for module in (self.unet, self.vae):
            if getattr(module, "_supports_gradient_checkpointing", False):
                (module.enable_gradient_checkpointing if enabled else module.disable_gradient_checkpointing)()
        self.block_checkpointing = enabled

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model: str, *, device: str | torch.device = "cpu", dtype: str | None = "fp32",
                        scheduler: str = "ddim") -> StableDiffusionBackend:
        """Load a diffusers Stable Diffusion folder or hub id (e.g. ``CompVis/stable-diffusion-v1-4``).

        Args:
            model: hub id or local folder with ``model_index.json``.
            device: ``"cuda"``, ``"cpu"``, ...
            dtype: one of ``fp32``, ``fp16``, ``bf16`` (fp16 on GPUs; the text gradient is loss-scaled, see
                :mod:`dpo_diff.search.gradient`); ``None``: fp16 on CUDA, fp32 elsewhere.
            scheduler: one of :data:`SCHEDULERS` (``ddim`` default, as in the paper).
        """
        dtype = load_settings(device, dtype, scheduler, cuda_dtype="fp16")
        from diffusers import StableDiffusionPipeline

        path, local_only = resolve_model(model, "Stable Diffusion model", "model_index.json")
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                path, safety_checker=None, requires_safety_checker=False, local_files_only=local_only,
            )
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"could not load Stable Diffusion model {model!r}: {e}") from e
        # Weights are cast in __init__ (the pipeline's dtype argument changed name across diffusers versions).
        return cls(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler, device=device,
                   dtype=DTYPES[dtype], scheduler_name=scheduler, source=model)

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self):
        return self.text.tokenizer

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.text.encoder

    @property
    def max_length(self) -> int:
        return self.text.max_length

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """The token-embedding table the word mixtures are spliced into (through a forward hook)."""
        return self.text.token_embedding

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``LongTensor[B, 77]``, padded and truncated exactly as ``StableDiffusionPipeline.encode_prompt`` does."""
        return self.text.tokenize(texts)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` including BOS and EOS (over 77: encoded in chunks, :mod:`dpo_diff.relax_chunks`)."""
        return self.text.count_tokens(text)

    def check_prompt(self, text: str) -> None:
        """Raise :class:`~dpo_diff.relax.PromptTooLongError` for a prompt the text encoder cannot take."""
        self.text.check_prompt(text)

    def text_views(self) -> list[TextView]:
        return [self.text]

    def encode_ids(self, input_ids: Tensor, *, embedding_hook: Callable | None = None) -> Tensor:
        """Run the text encoder on ``input_ids[B, 77]`` -> ``Tensor[B, 77, D]`` (last hidden state); see
        :meth:`TextView.run` for ``embedding_hook``."""
        return self.text.encode_ids(input_ids, embedding_hook=embedding_hook)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.encode_ids(self.tokenize(texts))

    def relaxed_conditioning(self, space, *, guidance_scale: float) -> Callable[[Tensor], Conditioning]:
        """``f(weights)`` -> :class:`Conditioning` with the space's word mixtures through the text encoder.

        Sides with slots are encoded from the Gumbel-softmax weights (:mod:`dpo_diff.relax`); a side without slots
        is encoded once, exactly. Long prompts: both sides in the same number of chunks (:mod:`dpo_diff.relax_chunks`).
        """
        from dpo_diff.relax_chunks import encode_side, key_mask, side_templates, template_chunks

        templates = side_templates(space, self.text)
        pos, neg = templates["positive"], templates["negative"]
        use_cfg = guidance_scale > 1
        if neg.slots and not use_cfg:
            raise ValueError("the space has negative-prompt slots but guidance_scale <= 1 disables the negative "
                             "prompt; use guidance > 1")
        n = template_chunks(pos)
        with torch.no_grad():
            fixed_cond = None if pos.slots else self.encode_ids(self.text.tokenize([space.prompt], n))
            fixed_uncond = (None if neg.slots or not use_cfg
                            else self.encode_ids(self.text.tokenize([space.negative_prompt], n)))

        def encode(weights: Tensor) -> Conditioning:
            cond = fixed_cond if fixed_cond is not None else encode_side(self.text, pos, weights)
            uncond = None
            if use_cfg:
                uncond = fixed_uncond if fixed_uncond is not None else encode_side(self.text, neg, weights)
            mask = key_mask([pos, neg] if use_cfg else [pos], weights)
            return Conditioning(cond, uncond, key_mask=None if mask is None else mask.to(cond.device))

        return encode

    # ------------------------------------------------------------------ diffusion
    def new_scheduler(self, num_steps: int | None = None, height: int | None = None, width: int | None = None):
        """A fresh scheduler (schedulers are stateful: multistep solvers keep past outputs). The image size does not
        change an SD schedule (flow-matching backbones shift theirs by it)."""
        sched = self._scheduler_cls.from_config(self._scheduler_config)
        if num_steps is not None:
            sched.set_timesteps(num_steps, device=self.device)
        return sched

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        h, w = height or self.default_size, width or self.default_size
        if h % self.vae_scale_factor or w % self.vae_scale_factor:
            raise ValueError(f"height/width {h}x{w} must be multiples of {self.vae_scale_factor}")
        return (self.unet.config.in_channels, h // self.vae_scale_factor, w // self.vae_scale_factor)

    def initial_latents(self, seeds: Sequence[int], scheduler, height: int | None = None,
                        width: int | None = None) -> Tensor:
        """Initial noise for each image seed, drawn on the CPU (same image on any device), as the pipeline does."""
        shape = self.latent_shape(height, width)
        noise = [torch.randn((1, *shape), generator=latent_generator(s), dtype=self.dtype) for s in seeds]
        return torch.cat(noise).to(self.device) * scheduler.init_noise_sigma

    def guided_prediction(self, scheduler, latents: Tensor, t: Tensor, text: Conditioning,
                          guidance_scale: float) -> tuple[Tensor, Tensor]:
        """One (classifier-free guided) UNet call. Returns ``(model_output, scaled_model_input)``."""
        cfg = guidance_scale > 1 and text.uncond is not None
        model_input = torch.cat([latents] * 2) if cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        out = self.unet_call(model_input, t, text, cfg)
        if cfg:
            out_uncond, out_text = out.chunk(2)
            out = out_uncond + guidance_scale * (out_text - out_uncond)
            model_input = model_input.chunk(2)[0]
        return out, model_input

    def unet_call(self, model_input: Tensor, t: Tensor, text: Conditioning, cfg: bool) -> Tensor:
        """The UNet's output for ``model_input`` (rows ``[uncond, cond]`` under classifier-free guidance)."""
        hidden = torch.cat([text.uncond, text.cond]) if cfg else text.cond
        return self.unet(model_input, t, encoder_hidden_states=hidden,
                         cross_attention_kwargs=key_mask_kwargs(self.unet, text, cfg), return_dict=False)[0]

    def alpha_bar(self, scheduler, t: Tensor | float) -> float:
        """Cumulative signal level abar_t of the training schedule at (possibly fractional) timestep ``t``."""
        acp = scheduler.alphas_cumprod
        tf = float(t)
        if not 0 <= tf <= len(acp) - 1:  # a negative index would wrap around to the end of the schedule
            raise ValueError(f"timestep {tf} is outside the training schedule [0, {len(acp) - 1}]")
        if tf == int(tf):
            return float(acp[int(tf)])
        # Fractional timesteps (Euler with linspace spacing): interpolate sigma = sqrt((1-a)/a), as the scheduler does.
        lo, hi = int(math.floor(tf)), int(math.ceil(tf))
        s = lambda a: math.sqrt((1 - a) / max(a, 1e-12))  # noqa: E731
        sig = s(float(acp[lo])) + (tf - lo) * (s(float(acp[hi])) - s(float(acp[lo])))
        return 1.0 / (1.0 + sig * sig)

    def predict_x0(self, model_output: Tensor, x_t: Tensor, abar: float) -> Tensor:
        """One-step estimate of the clean latents from the model output at noise level ``abar`` (the shortcut jump).

        epsilon: x0 = (x_t - sqrt(1 - abar) * eps) / sqrt(abar); v: x0 = sqrt(abar) * x_t - sqrt(1 - abar) * v.
        ``x_t`` is the variance-preserving model input (after ``scale_model_input``).
        """
        a = torch.as_tensor(abar, dtype=torch.float32)
        if self.prediction_type == "epsilon":
            return (x_t - (1 - a).sqrt() * model_output) / a.clamp_min(1e-8).sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * model_output
        return model_output

    def alpha_bar_at(self, scheduler, step_index: int) -> float:
        """abar of the noise level at step ``step_index``: 1 / (1 + sigma^2) from the scheduler's own sigmas where it
        keeps them (Euler, DPM++, ...: with continuous timesteps, as EDM-style v-prediction models use, t is a
        log-sigma, no index into the schedule); from the timestep otherwise (DDIM, PNDM)."""
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is None:
            return self.alpha_bar(scheduler, scheduler.timesteps[step_index])
        sigma = float(sigmas[step_index])
        return 1.0 / (1.0 + sigma * sigma)

    def x0_estimate(self, scheduler, model_output: Tensor, x_t: Tensor, step_index: int) -> Tensor:
        """The shortcut's one-step x0 jump from the model output at step ``step_index`` of ``scheduler``."""
        return self.predict_x0(model_output, x_t, self.alpha_bar_at(scheduler, step_index))

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images ``Tensor[B, 3, H, W]`` in [0, 1] (differentiable)."""
        latents = latents.to(self.dtype)
        images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)

    def denoise(self, scheduler, latents: Tensor, text: Conditioning, guidance_scale: float,
                step_range: range) -> Tensor:
        """Run scheduler steps ``step_range`` (indices into ``scheduler.timesteps``); grad mode is the caller's."""
        for i in step_range:
            t = scheduler.timesteps[i]
            out, _ = self.guided_prediction(scheduler, latents, t, text, guidance_scale)
            latents = scheduler.step(out, t, latents, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def sample(self, text: Conditioning, seeds: Sequence[int], *, steps: int = 50, guidance_scale: float = 7.5,
               height: int | None = None, width: int | None = None) -> Tensor:
        """Full sampler for a batch (one conditioning row per seed) -> images ``Tensor[B, 3, H, W]`` in [0, 1]."""
        scheduler = self.new_scheduler(steps, height, width)
        latents = self.initial_latents(seeds, scheduler, height, width)
        latents = self.denoise(scheduler, latents, text, guidance_scale, range(len(scheduler.timesteps)))
        return decode_in_slices(self, latents)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], negative_prompts: Sequence[str], seeds: Sequence[int], *,
                 steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                 width: int | None = None) -> Tensor:
        """Images for exact prompt texts, one per ``(prompt, negative_prompt, seed)`` row.

        Long prompts: a row's prompt and negative prompt are padded to the same chunk count, and rows of different
        counts run in separate batches, so a row's image never depends on the other rows.
        """
        check_rows(prompts, negative_prompts, seeds)
        use_cfg = guidance_scale > 1

        def one_group(rows: list[int], n: int) -> Tensor:
            cond = self.encode_ids(self.text.tokenize([prompts[i] for i in rows], n))
            uncond = self.encode_ids(self.text.tokenize([negative_prompts[i] for i in rows], n)) if use_cfg else None
            return self.sample(Conditioning(cond, uncond), [seeds[i] for i in rows], steps=steps,
                               guidance_scale=guidance_scale, height=height, width=width)

        return by_chunk_count([self.text], prompts, negative_prompts if use_cfg else None, one_group)


def key_mask_kwargs(unet, text: Conditioning, cfg: bool) -> dict | None:
    """The UNet's ``cross_attention_kwargs`` for ``text.key_mask`` (visibility p), ``None`` without one: ``key_bias``
    = log p in fp32, added to the cross-attention logits by the processors :func:`key_bias.install` puts on the UNet
    (diffusers' ``encoder_attention_mask`` rounds a soft mask away in fp16/bf16: see :mod:`.key_bias`)."""
    if text.key_mask is None:
        return None
    key_bias.install(unet)
    bias = key_bias.key_bias(text.key_mask)
    return {"key_bias": torch.cat([bias, bias]) if cfg else bias}


def load_settings(device: str | torch.device, dtype: str | None, scheduler: str, cuda_dtype: str) -> str:
    """Check ``from_pretrained``'s dtype and scheduler names, quiet the library imports, and return the dtype name
    (``None``: ``cuda_dtype`` on CUDA, fp32 elsewhere)."""
    dtype = dtype_name(dtype, device, cuda_dtype)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
    _quiet_imports()
    return dtype


def by_chunk_count(views: Sequence[TextView], prompts: Sequence[str], negative_prompts: Sequence[str] | None,
                   run: Callable[[list[int], int], Tensor]) -> Tensor:
    """Call ``run(rows, n)`` once per chunk count ``n`` (the most any view needs for a row's prompt or negative
    prompt) and put the images back in row order; one call when every row fits one chunk."""
    counts = [max(v.chunk_count(t) for v in views for t in (p, *([] if negative_prompts is None else [q])))
              for p, q in zip(prompts, negative_prompts or prompts)]
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(counts):
        groups.setdefault(n, []).append(i)
    if len(groups) <= 1:
        return run(list(range(len(prompts))), counts[0] if counts else 1)
    out: list[Tensor] = [torch.empty(0)] * len(prompts)
    for n, rows in groups.items():
        images = run(rows, n)
        for j, i in enumerate(rows):
            out[i] = images[j:j + 1]
    return torch.cat(out)


def _quiet_imports() -> None:
    """Silence import-time warnings (torchvision fallbacks) and progress bars of transformers/diffusers."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
