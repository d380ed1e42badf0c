"""CLIP judge: the spherical CLIP loss between generated images and the *user's* prompt (the only CLIP importer).

DPO-Diff's objective (paper Eq. 1) is ``L = 2 * arcsin(|x - y| / 2)^2`` for unit CLIP embeddings x (image) and
y (text), i.e. ``arccos(cos)^2 / 2``. Improve minimises it; attack maximises it. Preprocessing is a differentiable
tensor version of ``CLIPImageProcessor``: resize the shortest side (bicubic, antialiased), centre-crop, normalise;
images stay ``[B, 3, H, W]`` (the reference code transposed H and W instead of permuting channels). The resize to the
judge's own resolution (224 px for CLIP-class models) is part of the differentiable path, so the generator's images
go to the judge at whatever size they are decoded.

Every judge family (this one, :mod:`.siglip`, :mod:`.aesthetic`, :mod:`.checker`) offers the same call:
``loss(images, texts) -> Tensor[B]`` (lower is better; differentiable in the images except the checker's), and the
two halves :meth:`ClipJudge.features` / :meth:`ClipJudge.loss_from_features` so that judges on one backbone share
one forward pass of a decoded image (:mod:`.objective`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dpo_diff.judges.spec import JUDGE_KINDS, display_source
from dpo_diff.loading import ModelNotFoundError, resolve_model

DEFAULT_JUDGE = "openai/clip-vit-base-patch32"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def spherical_loss(x: Tensor, y: Tensor) -> Tensor:
    """Spherical distance loss between rows of ``x[B, D]`` and ``y[B or 1, D]`` (both normalised inside)."""
    x = F.normalize(x.float(), dim=-1)
    y = F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


class EmbeddingJudge:
    """What CLIP-class judges share: unit image features from ``preprocess`` (each family's own), cached unit text
    features, and the spherical loss between them. Subclasses set ``model``, ``tokenizer``, ``device``,
    ``max_length`` and ``_text_cache`` and define ``preprocess``."""

    text_attention_mask = True  # CLIP's text tower takes the mask; SigLIP's pools the last (padded) position

    def image_features(self, images: Tensor) -> Tensor:
        pixels = self.preprocess(images).to(self.model.dtype)
        out = self.model.get_image_features(pixel_values=pixels)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> Tensor:
        """Unit text features ``Tensor[N, D]`` (cached per text)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.max_length, truncation=True,
                                 return_tensors="pt")
            mask = {"attention_mask": ids.attention_mask.to(self.device)} if self.text_attention_mask else {}
            out = self.model.get_text_features(input_ids=ids.input_ids.to(self.device), **mask)
            feats = out.pooler_output if hasattr(out, "pooler_output") else out
            for t, f in zip(missing, F.normalize(feats.float(), dim=-1)):
                self._text_cache[t] = f
        return torch.stack([self._text_cache[t] for t in texts])

    @property
    def backbone(self) -> object:
        """What :meth:`features` depends on: judges with the same backbone share one image forward pass."""
        return self

    def features(self, images: Tensor) -> Tensor:
        return self.image_features(images)

    def loss_from_features(self, features: Tensor, texts: Sequence[str] | str) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return spherical_loss(features, self.text_features(texts))

    def loss(self, images: Tensor, texts: Sequence[str] | str) -> Tensor:
        """Spherical loss ``Tensor[B]`` of each image against its text (one text broadcasts)."""
        return self.loss_from_features(self.image_features(images), texts)



class ClipJudge(EmbeddingJudge):
    """A frozen ``transformers.CLIPModel`` scoring images against text.

    Args:
        model: the CLIP model; tokenizer: its tokenizer; image_size: side of the square crop the vision tower takes;
        mean/std: normalisation constants; device: where the judge runs (may differ from the generator's).
    """

    def __init__(self, model, tokenizer, *, image_size: int, mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, resize: int | None = None, device: str | torch.device = "cpu",
                 source: str = "", checkpointing: bool = False) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.name = f"clip:{display_source(source)}" if source else "clip"
        if checkpointing:
            enable_checkpointing(self.model)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.resize = int(resize or image_size)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.source = source
        self.max_length = int(model.config.text_config.max_position_embeddings)
        if len(tokenizer) < 1000:
            raise ValueError(f"the judge's tokenizer has only {len(tokenizer)} entries: its files are missing")
        self._text_cache: dict[str, Tensor] = {}

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_JUDGE, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, checkpointing: bool = False) -> ClipJudge:
        """Load any CLIP id or folder. The judge runs in fp32 by default so half-precision generators still get a
        finite, non-zero text gradient (the loss path is computed in fp32)."""
        import transformers
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        transformers.logging.set_verbosity_error()
        kind = model.partition(":")[0].lower()
        if kind in JUDGE_KINDS and kind != "clip" and not Path(model).exists():
            raise ValueError(f"--judge takes a CLIP model id or folder, not the {kind} judge {model!r}: use "
                             f"--objective {model!r} (it ranks candidates by the same loss, reported relative to the "
                             f"user prompt's) or --eval-judges")
        path, local_only = resolve_model(model, "CLIP judge", "config.json")
        try:
            clip = CLIPModel.from_pretrained(path, local_files_only=local_only, dtype=dtype)
            tok = CLIPTokenizer.from_pretrained(path, local_files_only=local_only)
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"could not load CLIP judge {model!r}: {e}") from e
        image_size = clip.config.vision_config.image_size
        mean, std, resize = OPENAI_MEAN, OPENAI_STD, image_size
        has_proc = not Path(path).is_dir() or (Path(path) / "preprocessor_config.json").is_file()
        if has_proc:
            try:
                proc = CLIPImageProcessor.from_pretrained(path, local_files_only=local_only)
                mean, std = tuple(proc.image_mean), tuple(proc.image_std)
                size = proc.size  # a dict or SizeDict with "shortest_edge" (or height/width)
                get = size.get if hasattr(size, "get") else (lambda k, d=None: getattr(size, k, d))
                resize = int(get("shortest_edge", None) or get("height", None) or image_size)
            except (OSError, ValueError):
                pass  # CLIP checkpoints without a processor config use OpenAI's constants
        return cls(clip, tok, image_size=image_size, mean=mean, std=std, resize=resize, device=device, source=model,
                   checkpointing=checkpointing)

    # ------------------------------------------------------------------ features
    def preprocess(self, images: Tensor) -> Tensor:
        """``images[B, 3, H, W]`` in [0, 1] -> normalised ``pixel_values`` (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        scale = self.resize / min(h, w)
        nh, nw = max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size]
        return (x - self.mean) / self.std

def enable_checkpointing(model) -> None:
    """Gradient checkpointing of the vision tower: activations are recomputed in the backward pass instead of kept
    (less memory for the shortcut gradient at 224+ px, one more forward pass of time).

    transformers checkpoints only modules in training mode; the vision encoder is switched to it, which changes
    nothing else because CLIP-class towers have no dropout at inference settings (checked here).
    """
    vision = getattr(model, "vision_model", model)
    dropout = float(getattr(getattr(model.config, "vision_config", model.config), "attention_dropout", 0.0) or 0.0)
    if dropout:
        raise ValueError(f"gradient checkpointing needs a vision tower without dropout; this one has "
                         f"attention_dropout={dropout}")
    checkpoint_blocks(model)
    vision.encoder.train()


def checkpoint_blocks(model) -> None:
    """Turn on transformers' (non-reentrant) gradient checkpointing; it acts only on modules in training mode."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5 (the old name warns)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
