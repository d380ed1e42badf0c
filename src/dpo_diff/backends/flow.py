"""Flow matching, shared by the rectified-flow backbones (SD 3.x: :mod:`~dpo_diff.backends.sd3`, FLUX.1:
:mod:`~dpo_diff.backends.flux`): schedulers and their timestep shift, the one-step x0 jump from the velocity, the
denoising loop, and the text side (CLIP views with pooled vectors, T5 views, relaxed through every encoder).

A rectified flow interpolates ``x_t = (1 - sigma) x0 + sigma noise``; the transformer predicts the velocity
``v = noise - x0``, so the shortcut text gradient's jump is ``x0 = x_t - sigma v`` (:func:`x0_from_velocity`), which
is exactly one Euler step from ``sigma`` to 0. As in :mod:`~dpo_diff.backends.diffusers_sd`, no method sets the
autograd mode: callers decide (see :mod:`dpo_diff.shortcut`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from dpo_diff.backends.base import DTYPES, Conditioning, check_rows, dtype_name
from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
from dpo_diff.backends.text import TextView
from dpo_diff.seeding import latent_generator

SCHEDULERS = ("ddim", "euler", "heun", "model")
"""``euler`` (and ``ddim``, the project's default name: DDIM is the first-order solver of the probability-flow ODE,
whose flow-matching counterpart is Euler): ``FlowMatchEulerDiscreteScheduler``; ``heun``:
``FlowMatchHeunDiscreteScheduler`` (second order, two model calls per step, fixed shift only); ``model``: the
scheduler saved with the model."""


def resolve_dtype(dtype: str | None, device: str | torch.device) -> torch.dtype:
    """``None``/auto: bf16 on CUDA (fp16 overflows these backbones' activations), fp32 elsewhere."""
    return DTYPES[dtype_name(dtype, device, "bf16")]


def check_max_sequence_length(n: int) -> None:
    """T5 tokens per prompt: the SD 3 and FLUX pipelines take at most 512."""
    if not 1 <= n <= 512:
        raise ValueError(f"max_sequence_length must be in [1, 512] (the pipelines' limit), got {n}")


def scheduler_class(name: str, saved: Any) -> type:
    """The scheduler class for ``name`` (see :data:`SCHEDULERS`); ``saved``: the model's own scheduler."""
    import diffusers

    if name == "model":
        return type(saved)
    if name in ("ddim", "euler"):
        return diffusers.FlowMatchEulerDiscreteScheduler
    if name == "heun":
        if saved.config.get("use_dynamic_shifting", False):
            raise ValueError("scheduler 'heun' has no resolution-dependent shift, which this model's scheduler uses; "
                             "choose 'euler' or 'model'")
        return diffusers.FlowMatchHeunDiscreteScheduler
    raise ValueError(f"unknown scheduler {name!r} for a flow-matching model; choose one of {SCHEDULERS}")


def calculate_shift(image_seq_len: int, config: Any, max_shift: float) -> float:
    """The resolution-dependent shift ``mu`` of the SD 3 and FLUX pipelines: linear in the number of image tokens,
    from ``base_shift`` at ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len`` (``max_shift``: the
    pipeline's default when the config has none: 1.16 for SD 3, 1.15 for FLUX)."""
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    m = (top - base) / (hi - lo)
    return image_seq_len * m + base - m * lo


def sigma_at(scheduler: Any, step_index: int) -> float:
    """The noise level sigma of ``scheduler.timesteps[step_index]`` (Heun repeats sigmas, as it repeats timesteps)."""
    return float(scheduler.sigmas[step_index])


def x0_from_velocity(x_t: Tensor, velocity: Tensor, sigma: float) -> Tensor:
    """The shortcut's one-step jump for a rectified flow: ``x0 = x_t - sigma v`` (in fp32, as the schedulers step)."""
    return x_t.float() - sigma * velocity.float()


class ClipView(TextView):
    """A CLIP text encoder whose conditioning is hidden layer ``layer`` (SD 3: -2, the penultimate; ``None``: the
    last) and whose pooled vector is the hidden state at EOS (projected for ``CLIPTextModelWithProjection``). Prompts
    over 77 tokens are truncated, as the SD 3 and FLUX pipelines do (T5 sees the whole prompt)."""

    truncates = True

    def __init__(self, tokenizer, encoder, *, layer: int | None = None, **kwargs) -> None:
        super().__init__(tokenizer, encoder, **kwargs)
        self.layer = layer

    def encode_ids(self, input_ids: Tensor, *, embedding_hook: Callable | None = None) -> Tensor:
        return self.encode(input_ids, embedding_hook=embedding_hook)[0]

    def encode(self, input_ids: Tensor, *, embedding_hook: Callable | None = None, eos: Tensor | None = None,
               mix_start: int = 0) -> tuple[Tensor, Tensor]:
        """``(hidden Tensor[B, L, D], pooled Tensor[B, P])``. ``eos`` (``Tensor[N]`` or ``[B, N]``, from
        :meth:`~dpo_diff.relax.PromptTemplate.eos_probs`): EOS's position distribution from ``mix_start`` on; the
        pooled vector is then that mixture of the last hidden states (exact at one-hot corners), not the hidden
        state at the template's placeholder EOS."""
        out = self.run(input_ids, embedding_hook=embedding_hook, output_hidden_states=True)
        hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        projection = getattr(self.encoder, "text_projection", None)
        if eos is None:
            pooled = out.text_embeds if projection is not None else out.pooler_output
            return hidden, pooled
        last = out.last_hidden_state[:, mix_start:]
        eos = eos.to(last.device, torch.float32).reshape(-1, last.shape[1], 1)  # [1 or B, N, 1]: a row per mixture
        pooled = (eos * last.float()).sum(-2).to(last.dtype)
        return hidden, (projection(pooled) if projection is not None else pooled)


class T5View(TextView):
    """A T5 encoder (no BOS, ``<pad>`` = 0, ``</s>``; SentencePiece word starts, see :func:`dpo_diff.relax._ids`).

    transformers 5's ``T5EncoderModel`` keeps ``shared`` (what ``get_input_embeddings`` returns) and
    ``encoder.embed_tokens`` as two modules with tied weights, and its forward calls the latter: the word mixtures
    are hooked there, or they would never reach the encoder.
    """

    def __init__(self, tokenizer, encoder, **kwargs) -> None:
        kwargs.setdefault("min_vocab", 100)  # T5's 32k; a placeholder tokenizer from missing files has ~3
        super().__init__(tokenizer, encoder, **kwargs)

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        inner = getattr(self.encoder, "encoder", None)
        return getattr(inner, "embed_tokens", None) or self.encoder.get_input_embeddings()


def encode_view(view: TextView, template: Any, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One encoder's ``(hidden, pooled or None)`` for a template with slot mixtures ``weights`` (``[S, O]`` or
    ``[B, S, O]``): the Gumbel-softmax mixtures go through the encoder (:func:`~dpo_diff.relax_chunks.side_inputs`;
    a CLIP template of a long prompt is the cut one-chunk layout of :func:`~dpo_diff.relax_chunks.view_template`)."""
    from dpo_diff.relax_chunks import ChunkedTemplate, first_chunk_eos, side_inputs

    ids, hook = side_inputs(template, weights)
    if not isinstance(view, ClipView):
        return view.encode_ids(ids, embedding_hook=hook), None
    if not template.slots:
        return view.encode(ids, embedding_hook=hook)
    w = weights.to(view.device, torch.float32)
    if isinstance(template, ChunkedTemplate):  # EOS's position over the whole (cut) sequence
        return view.encode(ids, embedding_hook=hook, eos=first_chunk_eos(template, w))
    return view.encode(ids, embedding_hook=hook, eos=template.eos_probs(w), mix_start=template.mix_start)


def encode_view_text(view: TextView, texts: Sequence[str]) -> tuple[Tensor, Tensor | None]:
    """One encoder's ``(hidden, pooled or None)`` for exact texts, as the pipelines encode them."""
    ids = view.tokenize(texts)
    if isinstance(view, ClipView):
        return view.encode(ids)
    return view.encode_ids(ids), None


class FlowMatchingBackend:
    """The parts SD 3 and FLUX share: frozen modules, the scheduler and its shift, noise, the denoising loop, the x0
    jump, the VAE decode, and the text side over ``views`` (exact and relaxed).

    Subclasses set ``views`` and implement ``_combine`` (per-encoder outputs -> hidden states + pooled vector),
    ``_velocity`` (one transformer call), ``_timestep_kwargs`` (how the pipeline sets the schedule),
    ``latent_shape`` and the class attribute ``negative_needs`` (what enables negative prompts, for errors).

    The transformer and the VAE decoder checkpoint per block in grad mode (diffusers' own gradient checkpointing;
    :meth:`set_block_checkpointing`): a grad-enabled call keeps only each block's inputs and recomputes the block in
    backward (one extra forward of the K grad steps, the same gradient). At 1024 px one grad step of these
    2-12 B transformers would otherwise keep tens of GB; the no-grad prefix is unaffected.
    """

    batched_cfg = True  # SD 3 runs the negative and positive rows in one batch; FLUX's true CFG in two calls
    negative_needs = "guidance_scale > 1"

    def __init__(self, transformer, vae, scheduler, views: list[TextView], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, scheduler_name: str = "ddim", source: str = "") -> None:
        self._scheduler_cls = scheduler_class(scheduler_name, scheduler)
        self._scheduler_config = scheduler.config
        self.scheduler_name = scheduler_name
        self.transformer, self.vae, self.views = transformer, vae, views
        self.device, self.dtype, self.source = torch.device(device), dtype, source
        for module in (transformer, vae, *(v.encoder for v in views)):
            module.requires_grad_(False)
            module.eval()  # modules built in memory start in train mode (T5's dropout would be on)
            module.to(self.device, dtype)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.set_block_checkpointing(True)

    def set_block_checkpointing(self, enabled: bool) -> None:
        """Per-block gradient checkpointing of the transformer and the VAE (see the class docstring)."""
        for module in (self.transformer, self.vae):
            if getattr(module, "_supports_gradient_checkpointing", False):
                (module.enable_gradient_checkpointing if enabled else module.disable_gradient_checkpointing)()
        self.block_checkpointing = enabled

    # ------------------------------------------------------------------ text
    def text_views(self) -> list[TextView]:
        return list(self.views)

    def check_prompt(self, text: str) -> None:
        """Raise :class:`~dpo_diff.relax.PromptTooLongError` for a prompt T5 cannot take. CLIP truncates at 77
        tokens, as the pipelines do (T5 sees the whole prompt, up to ``max_sequence_length``)."""
        for view in self.views:
            if not view.truncates:
                view.check_prompt(text)

    def encode_text(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(hidden states, pooled vector)`` of exact texts, as the pipeline's ``encode_prompt``."""
        return self._combine([encode_view_text(v, texts) for v in self.views])

    def relaxed_conditioning(self, space, *, guidance_scale: float) -> Callable[[Tensor], Conditioning]:
        """``f(weights)`` -> :class:`Conditioning` with the space's word mixtures through *every* text encoder
        (the shortcut text gradient reaches each slot through CLIP and T5). A side without slots is encoded once."""
        from dpo_diff.relax import negative_template, positive_template
        from dpo_diff.relax_chunks import view_template

        use_cfg = guidance_scale > 1
        if space.slots_of("negative") and not use_cfg:
            raise ValueError(f"the space has negative-prompt slots but guidance_scale {guidance_scale} disables the "
                             f"negative prompt on {type(self).__name__}; negative prompts need {self.negative_needs}")
        sides = {}
        for side, build, text in (("positive", positive_template, space.prompt),
                                  ("negative", negative_template, space.negative_prompt)):
            if side == "negative" and not use_cfg:
                continue
            if space.slots_of(side):
                sides[side] = [view_template(build, space, v) for v in self.views]
            else:
                with torch.no_grad():
                    sides[side] = self.encode_text([text])

        def side(name: str, weights: Tensor) -> tuple[Tensor, Tensor] | tuple[None, None]:
            value = sides.get(name)
            if value is None:
                return None, None
            if isinstance(value, tuple):
                return value
            return self._combine([encode_view(v, t, weights) for v, t in zip(self.views, value)])

        def encode(weights: Tensor) -> Conditioning:
            cond, pooled = side("positive", weights)
            uncond, uncond_pooled = side("negative", weights)
            return Conditioning(cond, uncond, pooled, uncond_pooled)

        return encode

    # ------------------------------------------------------------------ diffusion
    def new_scheduler(self, num_steps: int | None = None, height: int | None = None, width: int | None = None):
        """A fresh scheduler; with ``num_steps``, its schedule set as the pipeline sets it (the shift depends on the
        image size where the model's scheduler uses the resolution-dependent shift)."""
        sched = self._scheduler_cls.from_config(self._scheduler_config)
        if num_steps is not None:
            h, w = self._size(height, width)
            sched.set_timesteps(num_steps, device=self.device, **self._timestep_kwargs(sched, num_steps, h, w))
            sched.set_begin_index(0)
        return sched

    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        return height or self.default_size, width or self.default_size

    def initial_latents(self, seeds: Sequence[int], scheduler, height: int | None = None,
                        width: int | None = None) -> Tensor:
        """Initial noise (sigma = 1) for each image seed, drawn on the CPU, as the pipeline draws it."""
        shape = self.latent_shape(*self._size(height, width))
        noise = [torch.randn((1, *shape), generator=latent_generator(s), dtype=self.dtype) for s in seeds]
        return torch.cat(noise).to(self.device)

    def guided_prediction(self, scheduler, latents: Tensor, t: Tensor, text: Conditioning,
                          guidance_scale: float) -> tuple[Tensor, Tensor]:
        """The (classifier-free guided) velocity. Returns ``(velocity, latents)``: flow models take x_t unscaled."""
        if not (guidance_scale > 1 and text.uncond is not None):
            return self._velocity(latents, t, text.cond, text.pooled), latents
        if self.batched_cfg:
            both = self._velocity(torch.cat([latents] * 2), t, torch.cat([text.uncond, text.cond]),
                                  torch.cat([text.uncond_pooled, text.pooled]))
            v_uncond, v_text = both.chunk(2)
        else:
            v_text = self._velocity(latents, t, text.cond, text.pooled)
            v_uncond = self._velocity(latents, t, text.uncond, text.uncond_pooled)
        return v_uncond + guidance_scale * (v_text - v_uncond), latents

    def x0_estimate(self, scheduler, model_output: Tensor, x_t: Tensor, step_index: int) -> Tensor:
        """The shortcut's one-step x0 jump from the velocity at step ``step_index``: ``x0 = x_t - sigma v``."""
        return x0_from_velocity(x_t, model_output, sigma_at(scheduler, step_index))

    # The loop and the full sampler are the SD backend's: they only call the pieces above.
    denoise = StableDiffusionBackend.denoise
    sample = StableDiffusionBackend.sample

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images ``Tensor[B, 3, H, W]`` in [0, 1] (differentiable; VAE scaling and shift undone)."""
        cfg = self.vae.config
        latents = latents.to(self.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        images = self.vae.decode(latents, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], negative_prompts: Sequence[str], seeds: Sequence[int], *,
                 steps: int = 28, guidance_scale: float = 7.0, height: int | None = None,
                 width: int | None = None) -> Tensor:
        """Images for exact prompt texts, one per ``(prompt, negative_prompt, seed)`` row (the negative prompt is
        used where ``guidance_scale > 1``)."""
        check_rows(prompts, negative_prompts, seeds)
        cond, pooled = self.encode_text(prompts)
        uncond = uncond_pooled = None
        if guidance_scale > 1:
            uncond, uncond_pooled = self.encode_text(negative_prompts)
        return self.sample(Conditioning(cond, uncond, pooled, uncond_pooled), seeds, steps=steps,
                           guidance_scale=guidance_scale, height=height, width=width)

    # ------------------------------------------------------------------ per backbone
    default_size: int

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def _combine(self, outputs: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _velocity(self, latents: Tensor, t: Tensor, hidden: Tensor, pooled: Tensor) -> Tensor:
        raise NotImplementedError

    def _timestep_kwargs(self, scheduler, num_steps: int, height: int, width: int) -> dict:
        raise NotImplementedError


def load_components(pipeline_cls: type, model: str, what: str, dtype: torch.dtype) -> Any:
    """Load a diffusers pipeline folder or hub id (weights in ``dtype``; a clear error where it cannot be read)."""
    from dpo_diff.backends.diffusers_sd import _quiet_imports
    from dpo_diff.loading import ModelNotFoundError, resolve_model

    _quiet_imports()
    path, local_only = resolve_model(model, what, "model_index.json")
    from diffusers.pipelines import pipeline_utils

    # Loaded in the target dtype (T5-XXL alone is 19 GB in fp32); newer diffusers renamed ``torch_dtype``.
    key = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
    try:
        return pipeline_cls.from_pretrained(path, local_files_only=local_only, **{key: dtype})
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"could not load {what} {model!r}: {e}") from e
