"""The backend interface: what a diffusion backbone must offer the searches, and how a model folder picks one.

Searches, problems and judges never look inside a backbone. A backend (one adapter module per family:
:mod:`~dpo_diff.backends.diffusers_sd` for Stable Diffusion 1.x/2.x, and one module for each newer family) offers

* exact generation: :meth:`DiffusionBackend.generate` (prompt, negative prompt, seed per row -> images);
* the relaxed text side: :meth:`DiffusionBackend.relaxed_conditioning` (Gumbel-softmax word-mixture weights ->
  :class:`Conditioning`, differentiable, the mixtures going *through* every text encoder the model has);
* the pieces of its own denoising loop that the shortcut text gradient (:mod:`dpo_diff.shortcut`) runs:
  ``new_scheduler``, ``initial_latents``, ``denoise``, ``guided_prediction``, ``x0_estimate`` and ``decode``;
* ``check_prompt`` (a clear error for prompts the text encoders cannot take) and ``text_views`` (each
  tokenizer + text encoder pair, for the relaxation's corner-gap check).

Which backend a folder or hub id needs is read from its ``model_index.json`` (:func:`backend_class_for`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = ("auto", *DTYPES)
"""``auto``: the backbone's default for the device (fp32 on CPU; fp16 for SD 1.x/2.x and bf16 for the newer
backbones on GPUs, where fp16 underflows their text gradient or overflows their VAE)."""


def dtype_name(dtype: str | None, device: str | torch.device, cuda_default: str) -> str:
    """A checked dtype name; ``None``/``auto``: ``cuda_default`` on CUDA (the backbone's choice), fp32 elsewhere."""
    if dtype in (None, "auto"):
        dtype = cuda_default if torch.device(device).type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {DTYPE_NAMES}")
    return dtype

BACKENDS: dict[str, str] = {
    "StableDiffusionPipeline": "dpo_diff.backends.diffusers_sd:StableDiffusionBackend",
    "StableDiffusionXLPipeline": "dpo_diff.backends.sdxl:StableDiffusionXLBackend",
    "StableDiffusion3Pipeline": "dpo_diff.backends.sd3:StableDiffusion3Backend",
    "FluxPipeline": "dpo_diff.backends.flux:FluxBackend",
}
"""``model_index.json`` ``_class_name`` -> ``module:class`` of the adapter that runs it (imported on demand)."""


class UnsupportedModelError(ValueError):
    """A model folder whose pipeline class no backend supports."""


@dataclass
class Conditioning:
    """Text conditioning for a batch.

    ``cond``/``uncond``: the token-level embeddings ``Tensor[B, L, D]`` the denoiser cross-attends to (``uncond``:
    the negative prompt's, ``None`` without classifier-free guidance). ``pooled``/``uncond_pooled``: a pooled text
    vector ``Tensor[B, P]`` for backbones that take one (SDXL, SD 3, FLUX); ``None`` for SD 1.x/2.x. ``key_mask``:
    ``Tensor[B, L]`` in [0, 1], how visible each token of ``cond``/``uncond`` is to cross-attention (a long prompt's
    relaxation: the probability that its chunk exists, :func:`dpo_diff.relax_chunks.key_mask`); ``None``: all.
    """

    cond: Tensor
    uncond: Tensor | None
    pooled: Tensor | None = None
    uncond_pooled: Tensor | None = None
    key_mask: Tensor | None = None

    def expand(self, n: int) -> Conditioning:
        """Broadcast batch-1 rows to ``n`` rows (rows already of batch ``n`` stay as they are)."""

        def grow(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.expand(n, *x.shape[1:])

        return replace(self, cond=grow(self.cond), uncond=grow(self.uncond), pooled=grow(self.pooled),
                       uncond_pooled=grow(self.uncond_pooled), key_mask=grow(self.key_mask))


class TextViewLike(Protocol):
    """One tokenizer + text encoder pair (see :class:`dpo_diff.backends.text.TextView`)."""

    tokenizer: Any
    max_length: int

    def tokenize(self, texts: Sequence[str]) -> Tensor: ...

    def encode_ids(self, input_ids: Tensor, *, embedding_hook: Callable | None = None) -> Tensor: ...


class DiffusionBackend(Protocol):
    """What searches and :class:`~dpo_diff.problem.Problem` use of a backbone (see the module docstring)."""

    device: Any
    dtype: Any
    source: str

    def check_prompt(self, text: str) -> None: ...

    def generate(self, prompts: Sequence[str], negative_prompts: Sequence[str], seeds: Sequence[int], *,
                 steps: int, guidance_scale: float, height: int | None = None,
                 width: int | None = None) -> Tensor: ...

    def relaxed_conditioning(self, space: Any, *, guidance_scale: float) -> Callable[[Tensor], Conditioning]: ...

    def text_views(self) -> list[TextViewLike]: ...

    def new_scheduler(self, num_steps: int | None = None, height: int | None = None,
                      width: int | None = None) -> Any: ...

    def initial_latents(self, seeds: Sequence[int], scheduler: Any, height: int | None = None,
                        width: int | None = None) -> Tensor: ...

    def denoise(self, scheduler: Any, latents: Tensor, text: Conditioning, guidance_scale: float,
                step_range: range) -> Tensor: ...

    def guided_prediction(self, scheduler: Any, latents: Tensor, t: Tensor, text: Conditioning,
                          guidance_scale: float) -> tuple[Tensor, Tensor]: ...

    def x0_estimate(self, scheduler: Any, model_output: Tensor, x_t: Tensor, step_index: int) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


DECODE_PIXELS = 4 * 512 * 512
"""Image pixels per VAE decode call of the full sampler: 4 images at 512 px, 1 at 1024 px (SDXL's VAE decodes in
fp32 when fp16 would overflow; one 1024 px image then takes several GB of activations)."""


def decode_in_slices(backend: Any, latents: Tensor) -> Tensor:
    """``backend.decode`` of a denoised batch, a slice of images at a time, as fp32 images.

    The denoising steps are the expensive part: an out-of-memory in the decode halves the slice (remembered in
    ``backend._decode_slice``) and redoes only the decode, instead of failing the batch and so throwing its
    denoising away. Slices never exceed :data:`DECODE_PIXELS` of image."""
    from dpo_diff.device import is_out_of_memory, release_memory

    n = len(latents)
    pixels = latents.shape[-2] * latents.shape[-1] * getattr(backend, "vae_scale_factor", 8) ** 2
    size = max(1, min(n, DECODE_PIXELS // max(pixels, 1), getattr(backend, "_decode_slice", n)))
    images, i = [], 0
    while i < n:
        failed = False
        try:
            images.append(backend.decode(latents[i : i + size]).float())
        except Exception as e:  # noqa: BLE001 - only out-of-memory is retried
            if size == 1 or not is_out_of_memory(e):
                raise
            failed = True
        if failed:  # after the except block: its traceback pins the failed decode's activations
            size = backend._decode_slice = max(1, size // 2)
            release_memory()
            continue
        i += size
    return torch.cat(images) if len(images) > 1 else images[0]


def check_rows(prompts: Sequence[str], negative_prompts: Sequence[str], seeds: Sequence[int]) -> None:
    """``generate``'s rows: one prompt, negative prompt and seed each."""
    if not (len(prompts) == len(negative_prompts) == len(seeds)):
        raise ValueError(f"prompts, negative_prompts and seeds must have the same length, got {len(prompts)}, "
                         f"{len(negative_prompts)} and {len(seeds)}")


def pipeline_class_name(path: str) -> str:
    """The ``_class_name`` in a local model folder's ``model_index.json`` (a clear error where it is missing)."""
    index = Path(path) / "model_index.json"
    try:
        data = json.loads(index.read_text())
    except FileNotFoundError:
        raise UnsupportedModelError(f"{str(path)!r} has no model_index.json; point at a diffusers pipeline folder "
                                    f"(saved with save_pretrained)") from None
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"{str(index)!r} is not valid JSON (line {e.lineno}): {e.msg}") from None
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise UnsupportedModelError(f"{str(index)!r} has no \"_class_name\" naming the pipeline class")
    return name


def backend_class_for(class_name: str) -> type:
    """The backend class for a pipeline class name, imported on demand."""
    if class_name not in BACKENDS:
        raise UnsupportedModelError(
            f"pipeline class {class_name!r} is not supported; supported: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[class_name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:  # a family whose adapter is not available in this install
        raise UnsupportedModelError(f"pipeline class {class_name!r}: its backend could not be loaded ({e})") from e


def load_backend(model: str, *, device: str = "cpu", dtype: str | None = None, scheduler: str = "ddim"):
    """Load any supported diffusers pipeline folder or hub id with the backend its ``model_index.json`` names.

    Args:
        model: hub id or local folder with ``model_index.json``.
        device: ``"cuda"``, ``"cpu"``, ...
        dtype: one of :data:`DTYPE_NAMES`; ``auto`` or ``None`` picks the backbone's default for the device.
        scheduler: a scheduler name the backend accepts (``model`` keeps the one saved with the model).
    """
    from dpo_diff.loading import ModelNotFoundError, resolve_model

    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {DTYPE_NAMES}")
    path, local_only = resolve_model(model, "diffusion model", "model_index.json")
    if not Path(path).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path_index = hf_hub_download(path, "model_index.json", local_files_only=local_only)
        except Exception as e:  # noqa: BLE001 - any hub failure is "could not load"
            raise ModelNotFoundError(f"could not read model_index.json of {model!r}: {e}") from e
        name = pipeline_class_name(str(Path(path_index).parent))
    else:
        name = pipeline_class_name(path)
    cls = backend_class_for(name)
    return cls.from_pretrained(model, device=device, dtype=None if dtype == "auto" else dtype, scheduler=scheduler)
