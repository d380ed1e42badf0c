"""The LAION aesthetic predictor as a judge: an MLP on unit CLIP ViT-L/14 image embeddings, loaded from a weights file.

The predictor (``improved-aesthetic-predictor``, e.g. ``sac+logos+ava1-l14-linearMSE.pth``) is a stack of linear
layers (``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``: 768 -> 1024 -> 128 -> 64 -> 16 -> 1,
dropout between them and no activation, as published) applied to the L2-normalised CLIP image embedding; it
predicts a 1-10 rating. The loss is ``-rating`` (lower is better, like every judge), so improve raises the rating.
The text is ignored: aesthetics does not depend on the prompt. Preprocessing is the CLIP backbone's own.

Accepted files: a ``torch.save``'d state dict (``.pth``/``.pt``, loaded with ``weights_only=True``) or a
``.safetensors`` file, with keys ``layers.N.weight``/``layers.N.bias`` (or ``N.weight``); any depth and input size
(the input size must equal the backbone's embedding size).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

_KEY = re.compile(r"^(?:layers\.)?(\d+)\.(weight|bias)$")


def load_mlp_weights(path: str | Path) -> list[tuple[Tensor, Tensor]]:
    """``[(weight, bias), ...]`` of the linear layers in order (raises ``ValueError`` naming the file's keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic predictor weights {str(path)!r} do not exist (give the .pth or "
                                f".safetensors file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of linear layers")
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"{path}: unexpected key {key!r}; expected layers.N.weight / layers.N.bias "
                             f"(keys: {sorted(state)[:8]})")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = value.float()
    out = []
    for i in sorted(layers):
        if "weight" not in layers[i] or layers[i]["weight"].ndim != 2:
            raise ValueError(f"{path}: layer {i} has no 2-d weight")
        w = layers[i]["weight"]
        out.append((w, layers[i].get("bias", torch.zeros(w.shape[0]))))
    for (a, _), (b, _) in zip(out, out[1:]):
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"{path}: layer sizes do not chain ({tuple(a.shape)} then {tuple(b.shape)})")
    if not out or out[-1][0].shape[0] != 1:
        raise ValueError(f"{path}: the last layer must have one output (the rating)")
    return out


class AestheticJudge:
    """Aesthetic rating of images by an MLP on a CLIP backbone's unit image embeddings (see the module docstring)."""

    def __init__(self, layers: list[tuple[Tensor, Tensor]], backbone, *, source: str = "") -> None:
        self.clip = backbone
        dim = int(backbone.model.config.projection_dim)
        if layers[0][0].shape[1] != dim:
            raise ValueError(f"the aesthetic predictor takes {layers[0][0].shape[1]}-d embeddings but its CLIP "
                             f"backbone {backbone.source or ''} gives {dim}-d ones (the LAION predictor needs "
                             f"openai/clip-vit-large-patch14: pass [clip=...])")
        self.layers = [(w.to(backbone.device), b.to(backbone.device)) for w, b in layers]
        self.name = f"aesthetic:{source}" if source else "aesthetic"

    @classmethod
    def from_file(cls, path: str | Path, backbone) -> AestheticJudge:
        return cls(load_mlp_weights(path), backbone, source=str(path))

    def rating(self, features: Tensor) -> Tensor:
        x = features.float()
        for w, b in self.layers:
            x = x @ w.t() + b  # no activation between layers: the published predictor is linear
        return x.squeeze(-1)

    @property
    def backbone(self) -> object:
        return self.clip

    def features(self, images: Tensor) -> Tensor:
        return self.clip.image_features(images)

    def loss_from_features(self, features: Tensor, texts: Sequence[str] | str = "") -> Tensor:
        return -self.rating(features)

    def loss(self, images: Tensor, texts: Sequence[str] | str = "") -> Tensor:
        """``-rating`` per image, ``Tensor[B]`` (the text is ignored)."""
        return self.loss_from_features(self.features(images))
