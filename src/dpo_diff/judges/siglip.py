"""SigLIP judge: any transformers ``SiglipModel`` checkpoint, scored like the CLIP judge.

The loss is the same spherical distance between unit image and text embeddings as the CLIP judge's (lower is
better), not SigLIP's sigmoid: ``sigmoid(scale * cos + bias)`` saturates at 0 or 1 for most image/text pairs, so
its gradient vanishes where a search needs it, while the angle keeps the ranking of the sigmoid (it is monotone in
``cos``). Preprocessing is a differentiable tensor version of ``SiglipImageProcessor``: resize the whole image to
the model's square size (no crop; bicubic unless the processor says bilinear), rescale, normalise. Texts are padded
to the model's length (``padding="max_length"``), as SigLIP was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dpo_diff.judges.clip import EmbeddingJudge, enable_checkpointing
from dpo_diff.judges.spec import display_source
from dpo_diff.loading import ModelNotFoundError, resolve_model

_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL resample codes of the processor config


class SiglipJudge(EmbeddingJudge):
    """A frozen ``transformers.SiglipModel`` scoring images against text (see the module docstring)."""

    text_attention_mask = False

    def __init__(self, model, tokenizer, *, height: int, width: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bicubic",
                 device: str | torch.device = "cpu", source: str = "", checkpointing: bool = False) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        if checkpointing:
            enable_checkpointing(self.model)
        self.tokenizer = tokenizer
        self.height, self.width, self.resample = int(height), int(width), resample
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.name = f"siglip:{display_source(source)}" if source else "siglip"
        self._text_cache: dict[str, Tensor] = {}

    @classmethod
    def from_pretrained(cls, model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        checkpointing: bool = False) -> SiglipJudge:
        import transformers
        from transformers import AutoTokenizer, SiglipModel

        transformers.logging.set_verbosity_error()
        path, local_only = resolve_model(model, "SigLIP judge", "config.json")
        try:
            net = SiglipModel.from_pretrained(path, local_files_only=local_only, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        except ImportError as e:  # SigLIP v1 checkpoints ship a SentencePiece model (spiece.model)
            raise ImportError(f"SigLIP judge {model!r} needs its tokenizer's library: {e} (for SentencePiece "
                              f"tokenizers: pip install sentencepiece protobuf)") from e
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"could not load SigLIP judge {model!r}: {e}") from e
        size = net.config.vision_config.image_size
        kw: dict = {"height": size, "width": size}
        proc_file = Path(path) / "preprocessor_config.json" if Path(path).is_dir() else None
        if proc_file is None or proc_file.is_file():
            kw.update(_processor_settings(path, local_only, size))
        return cls(net, tok, device=device, source=model, checkpointing=checkpointing, **kw)

    def preprocess(self, images: Tensor) -> Tensor:
        """``images[B, 3, H, W]`` in [0, 1] -> normalised ``pixel_values`` (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode=self.resample, align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std


def _processor_settings(path: str, local_only: bool, size: int) -> dict:
    """Size, resampling and normalisation of the checkpoint's ``SiglipImageProcessor`` (the model's defaults when it
    has none)."""
    import json

    if Path(path).is_dir():
        cfg = json.loads((Path(path) / "preprocessor_config.json").read_text())
    else:
        from huggingface_hub import hf_hub_download

        cfg = json.loads(Path(hf_hub_download(path, "preprocessor_config.json",
                                              local_files_only=local_only)).read_text())
    sz = cfg.get("size") or {}
    resample = _RESAMPLE.get(int(cfg.get("resample", 3)))
    if resample is None:
        raise ValueError(f"SigLIP processor resample {cfg.get('resample')} is not supported; allowed: 2 (bilinear), "
                         f"3 (bicubic)")
    return {"height": int(sz.get("height", size)), "width": int(sz.get("width", size)), "resample": resample,
            "mean": tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))), "std": tuple(cfg.get("image_std", (0.5, 0.5, 0.5)))}
