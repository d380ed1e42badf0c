"""VQAScore judge (Lin et al., ECCV 2024): ask a vision-language model whether the image shows the prompt.

The loss is ``-log P("Yes" | image, question)`` with the question of t2v_metrics (the paper's code)::

    Does this figure show "{prompt}"? Please answer yes or no.

put in the model's chat template as one user turn (an image, then the question) followed by the assistant's turn.
``P`` is the **full softmax** over the vocabulary at the first answer position, as t2v_metrics scores its
decoder-only models (Qwen2-VL: the softmax of the first generated token; LLaVA: the answer tokens' cross-entropy,
which for the one-token answer "Yes" is the same number), not a two-way Yes-vs-No softmax: probability the model puts
on other tokens ("yes", "Sure") counts against the image, and the loss does not saturate at 0 when "No" is
unlikely. The answer must be one token after the template (checked at load).

Any transformers image-text-to-text model (``AutoModelForImageTextToText``) whose chat template marks the image with
the model's image token and whose processor expands that one token into as many tokens as the vision tower gives
features works: LLaVA-1.5 (``llava-hf/llava-1.5-7b-hf``), Qwen2-VL and Qwen2.5-VL (``Qwen/Qwen2-VL-2B-Instruct``,
...). The expansion is done here, counting the features the model's own ``get_image_features`` returns, so the
processor class (which for Qwen2-VL needs torchvision) is not needed; the tokenizer, image processor and chat
template are. Models that build inputs differently are refused at load with the reason (PaliGemma: no chat template,
a prefix-LM layout of its own; InstructBLIP: Q-Former inputs; LLaVA-NeXT/OneVision: tiled "anyres" images).

Pixel preprocessing is a differentiable torch version of the model's image processor, at its resolution and
normalisation: CLIP-style (LLaVA) resize of the shortest side and centre crop; SigLIP/BLIP-style resize to a square;
Qwen2-VL's ``smart_resize`` to multiples of patch x merge size (the processor's own function) and its patch layout.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dpo_diff.judges.clip import checkpoint_blocks
from dpo_diff.judges.spec import display_source
from dpo_diff.loading import ModelNotFoundError, resolve_model

QUESTION = 'Does this figure show "{}"? Please answer yes or no.'  # t2v_metrics' default_question_template
ANSWER = "Yes"
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL resample codes of image processor configs
_CROP_KINDS = ("CLIPImageProcessor", "LlavaImageProcessor")
_SQUARE_KINDS = ("SiglipImageProcessor", "BlipImageProcessor")
_PATCH_KINDS = ("Qwen2VLImageProcessor",)


class VqaJudge:
    """A frozen image-text-to-text model scoring ``-log P("Yes")`` (see the module docstring).

    Args:
        model: the VLM; tokenizer, image_processor, chat_template: its own; device: where it runs; source: the id
        or folder (for names); checkpointing: gradient checkpointing of every block (vision and language).
    """

    def __init__(self, model, tokenizer, image_processor, chat_template: str, *, device: str | torch.device = "cpu",
                 source: str = "", checkpointing: bool = False, question: str = QUESTION,
                 answer: str = ANSWER) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        if checkpointing:
            enable_checkpointing(self.model)
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.device = torch.device(device)
        self.pixels = PixelPreprocessor(image_processor, self.device)
        self.question, self.answer = question, answer
        self.image_token_id = _image_token_id(model.config)
        self.name = f"vqa:{display_source(source)}" if source else "vqa"
        forward = inspect.signature(type(model).forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}  # one position, not [B, L, V]
        # one forward per scoring, never a generation: no KV cache (a 7B model would build ~0.65 GB per image)
        self._keep["use_cache"] = False
        self._token_types = "mm_token_type_ids" in forward  # Qwen2-VL's M-RoPE reads which tokens are the image
        self._prompts: dict[str, tuple[list[int], int]] = {}
        self._n_image_tokens: dict[tuple, int] = {}
        self.prompt_ids("a photo")  # refuse a template without the image token or a multi-token answer at load

    @classmethod
    def from_pretrained(cls, model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        checkpointing: bool = False) -> VqaJudge:
        import transformers
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        transformers.logging.set_verbosity_error()
        path, local_only = resolve_model(model, "VQA judge", "config.json")
        try:
            net = AutoModelForImageTextToText.from_pretrained(path, local_files_only=local_only, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
            proc = AutoImageProcessor.from_pretrained(path, local_files_only=local_only)
        except (OSError, ValueError) as e:  # includes "Unrecognized configuration class" for non-VLMs
            raise ModelNotFoundError(f"could not load VQA judge {model!r} as an image-text-to-text model with its "
                                     f"tokenizer and image processor: {e}") from e
        template = _chat_template(path, local_only, tok)
        if template is None:
            raise ValueError(f"VQA judge {model!r} ({type(net).__name__}) has no chat template: the question cannot "
                             "be put to it the way it was trained (PaliGemma and InstructBLIP build their inputs "
                             "otherwise and are not supported)")
        return cls(net, tok, proc, template, device=device, source=model, checkpointing=checkpointing)

    # ------------------------------------------------------------------ text
    def prompt_ids(self, text: str) -> tuple[list[int], int]:
        """Token ids of the templated question (one image token, not yet expanded) and the answer's token id."""
        if text not in self._prompts:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.question.format(text)}]}]
            prompt = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                        add_generation_prompt=True, tokenize=False)
            ids = self._encode(prompt)
            with_answer = self._encode(prompt + ("" if prompt[-1:].isspace() else " ") + self.answer)
            if with_answer[: len(ids)] != ids or len(with_answer) != len(ids) + 1:
                raise ValueError(f"the answer {self.answer!r} is not one token after this model's prompt (it "
                                 f"tokenizes as {with_answer[len(ids) - 1:]} after ...{ids[-3:]})")
            if ids.count(self.image_token_id) != 1:
                raise ValueError(f"the chat template put {ids.count(self.image_token_id)} image tokens (id "
                                 f"{self.image_token_id}) in the prompt, not 1: this model marks images otherwise "
                                 f"(prompt: {prompt[:200]!r})")
            self._prompts[text] = ids, with_answer[-1]
        return self._prompts[text]

    def _encode(self, text: str) -> list[int]:
        """Ids as the model's processor makes them: the tokenizer's leading specials (BOS) unless the template
        wrote them itself, never trailing ones (an EOS would end the turn before the answer)."""
        bare = self.tokenizer(text, add_special_tokens=False).input_ids
        full = self.tokenizer(text).input_ids
        lead = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), 0)
        prefix = full[:lead]
        return bare if bare[: len(prefix)] == prefix else prefix + bare

    # ------------------------------------------------------------------ the judge interface
    @property
    def backbone(self) -> object:
        return self

    def features(self, images: Tensor) -> Tensor:
        # the language model reads the image with the question: nothing text-free to share with other judges
        return images

    def loss_from_features(self, images: Tensor, texts: Sequence[str] | str) -> Tensor:
        return self.loss(images, texts)

    def loss(self, images: Tensor, texts: Sequence[str] | str) -> Tensor:
        """``-log P("Yes")`` per image ``Tensor[B]`` (one text broadcasts); differentiable in the images."""
        texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
        if len(texts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        # rows that share a text share one unpadded batch: no padding, so batched = one at a time
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            groups.setdefault(t, []).append(i)
        order = [i for rows in groups.values() for i in rows]
        losses = torch.cat([self._group_loss(images[rows], text) for text, rows in groups.items()])
        return losses[torch.tensor(order, device=losses.device).argsort()]

    def _group_loss(self, images: Tensor, text: str) -> Tensor:
        inputs = self.model_inputs(images, text)
        out = self.model(**inputs, **self._keep)
        return -out.logits[:, -1].float().log_softmax(-1)[:, self.prompt_ids(text)[1]]

    def model_inputs(self, images: Tensor, text: str) -> dict[str, Tensor]:
        """What the model's processor would give for these images and the question about ``text`` (one text for
        all rows), with differentiable ``pixel_values``."""
        pixels, extra = self.pixels(images)
        n = self._image_tokens(pixels, extra, len(images))
        ids = self.prompt_ids(text)[0]
        at = ids.index(self.image_token_id)
        row = torch.tensor(ids[:at] + [self.image_token_id] * n + ids[at + 1:], device=self.device)
        input_ids = row.expand(len(images), -1)
        if self._token_types:  # as the processor makes them: 1 for image tokens, 0 for text
            extra = {**extra, "mm_token_type_ids": (input_ids == self.image_token_id).long()}
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "pixel_values": pixels.to(self.model.dtype), **extra}

    @torch.no_grad()
    def _image_tokens(self, pixels: Tensor, extra: dict[str, Tensor], batch: int) -> int:
        """How many features the vision tower gives one image (what the image token expands to), once per size."""
        one = {k: v[:1] for k, v in extra.items()}
        first = pixels[: len(pixels) // batch]  # Qwen2-VL: the first image's patches; others: the first image
        key = (tuple(first.shape), *(tuple(v.flatten().tolist()) for v in one.values()))
        if key not in self._n_image_tokens:
            out = self.model.get_image_features(pixel_values=first.to(self.model.dtype), **one)
            feats = getattr(out, "pooler_output", out)
            if isinstance(feats, (list, tuple)):
                n = len(feats[0])
            else:
                n = feats.shape[1] if feats.ndim == 3 else feats.shape[0]
            self._n_image_tokens[key] = int(n)
        return self._n_image_tokens[key]


class PixelPreprocessor:
    """A differentiable torch version of a VLM's image processor: ``images[B, 3, H, W]`` in [0, 1] ->
    ``(pixel_values, extra model inputs)`` at the processor's size and normalisation."""

    def __init__(self, processor, device: torch.device) -> None:
        self.kind = type(processor).__name__.removesuffix("Fast").removesuffix("Pil")
        allowed = (*_CROP_KINDS, *_SQUARE_KINDS, *_PATCH_KINDS)
        if self.kind not in allowed:
            raise ValueError(f"image processor {type(processor).__name__} is not supported by the VQA judge; "
                             f"supported: {', '.join(allowed)} (tiled 'anyres' processors need their own layout)")
        if getattr(processor, "do_pad", False):
            raise ValueError(f"{type(processor).__name__} with do_pad=True (padding to a square) is not supported")
        if getattr(processor, "do_rescale", True) is False or abs(getattr(processor, "rescale_factor", 1 / 255)
                                                                  - 1 / 255) > 1e-9:
            raise ValueError("the image processor does not rescale by 1/255: it expects other pixel ranges than "
                             "the [0, 1] images of a generator")
        self.p = processor
        self.resample = _RESAMPLE.get(int(getattr(processor, "resample", 3)))
        if self.resample is None:
            raise ValueError(f"image processor resample {processor.resample} is not supported; allowed: 2 "
                             f"(bilinear), 3 (bicubic)")
        normalize = getattr(processor, "do_normalize", True)
        mean = processor.image_mean if normalize else (0.0, 0.0, 0.0)
        std = processor.image_std if normalize else (1.0, 1.0, 1.0)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = device

    def __call__(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if self.kind in _PATCH_KINDS:
            return self._patches(x)
        if self.kind in _CROP_KINDS:
            x = self._resize_crop(x)
        elif getattr(self.p, "do_resize", True):
            x = self._resize(x, int(_size(self.p.size, "height")), int(_size(self.p.size, "width")))
        return (x - self.mean) / self.std, {}

    def _resize(self, x: Tensor, h: int, w: int) -> Tensor:
        if tuple(x.shape[-2:]) == (h, w):
            return x
        return F.interpolate(x, size=(h, w), mode=self.resample, align_corners=False, antialias=True)

    def _resize_crop(self, x: Tensor) -> Tensor:
        """transformers' shortest-edge resize (the long side truncated, as it does) and centre crop."""
        if getattr(self.p, "do_resize", True):
            edge = int(_size(self.p.size, "shortest_edge"))
            h, w = x.shape[-2:]
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(edge * long / short)
            x = self._resize(x, *((edge, new_long) if h <= w else (new_long, edge)))
        if getattr(self.p, "do_center_crop", True):
            ch, cw = int(_size(self.p.crop_size, "height")), int(_size(self.p.crop_size, "width"))
            h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        return x

    def _patches(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Qwen2-VL: ``smart_resize`` (the processor module's own), normalise, and its flat patch layout
        ``[B * gh * gw, C * T * P * P]`` with ``image_grid_thw`` ``[B, 3]`` (a still image repeats over T)."""
        p, m, t = int(self.p.patch_size), int(self.p.merge_size), int(self.p.temporal_patch_size)
        smart_resize = sys.modules[type(self.p).__module__].smart_resize
        h, w = smart_resize(int(x.shape[-2]), int(x.shape[-1]), factor=p * m,
                            min_pixels=int(_size(self.p.size, "shortest_edge")),
                            max_pixels=int(_size(self.p.size, "longest_edge")))
        x = (self._resize(x, h, w) - self.mean) / self.std
        b, c = x.shape[:2]
        gh, gw = h // p, w // p
        x = x.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)  # b, gh, gw, mh, mw, C, ...
        x = x[:, :, :, :, :, :, None].expand(*x.shape[:6], t, p, p)  # ... T, ph, pw
        grid = torch.tensor([[1, gh, gw]] * b, device=self.device)
        return x.reshape(b * gh * gw, c * t * p * p), {"image_grid_thw": grid}


def _size(size: Any, key: str) -> Any:
    """A processor's ``size``/``crop_size`` entry (a dict in configs, a SizeDict on transformers 5 objects)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    if value is None:
        raise ValueError(f"the image processor's size {size} has no {key!r}")
    return value


def _image_token_id(config) -> int:
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__} names no image token (image_token_id / image_token_index)")


def _chat_template(path: str, local_only: bool, tokenizer) -> str | None:
    """The chat template: the tokenizer's, else the processor's file (``chat_template.jinja``/``.json``)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    for name in ("chat_template.jinja", "chat_template.json", "processor_config.json"):
        file = Path(path) / name if Path(path).is_dir() else _hub_file(path, name, local_only)
        if file is None or not file.is_file():
            continue
        text = file.read_text(encoding="utf-8")
        template = text if name.endswith(".jinja") else json.loads(text).get("chat_template")
        if template:
            return template
    return None


def _hub_file(repo: str, name: str, local_only: bool) -> Path | None:
    """A file of a hub repository (the cached copy when offline), or None where the repository has none."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, name, local_files_only=local_only))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def enable_checkpointing(model) -> None:
    """Checkpoint every block: transformers checkpoints only modules in training mode, so the model is switched to
    it, which is refused where that would change the output (any dropout)."""
    dropouts = sorted({f"{n}: p={m.p}" for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)
                       and m.p > 0})
    dropouts += _config_dropouts(model.config)
    if dropouts:
        raise ValueError(f"gradient checkpointing needs a model without dropout (training mode turns it on); this "
                         f"one has {dropouts[:5]}")
    checkpoint_blocks(model)
    model.train()


def _config_dropouts(config, prefix: str = "") -> list[str]:
    """Dropout rates in a config and its sub-configs (attention dropout is functional: no module shows it)."""
    out = []
    for key, value in vars(config).items():
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):
            out += _config_dropouts(value, f"{prefix}{key}.")
        elif "dropout" in key and isinstance(value, (int, float)) and value > 0:
            out.append(f"{prefix}{key}={value}")
    return out
