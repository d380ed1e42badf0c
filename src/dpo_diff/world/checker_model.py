"""The checker's network: a small CNN reading a scene's attributes back from a 32x32 image (needs torch)."""

from __future__ import annotations

import torch
from torch import nn

from dpo_diff.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES

# Output heads: name -> class labels. Objects are slots ordered left to right (a lone object is slot 0).
HEADS: dict[str, tuple[str, ...]] = {
    "count": ("1", "2"),
    "background": tuple(BACKGROUNDS),
    "position": POSITIONS,
    "colour0": tuple(COLOURS), "shape0": SHAPES, "size0": SIZES,
    "colour1": tuple(COLOURS), "shape1": SHAPES, "size1": SIZES,
}


class CheckerNet(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(block(3, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
                                      block(2 * w, 4 * w), nn.MaxPool2d(2))
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: ``(N, 3, 32, 32)`` in [-1, 1]. Returns logits per head."""
        h = self.trunk(self.features(images))
        return {k: head(h) for k, head in self.heads.items()}


def scene_targets(scenes: list) -> dict[str, torch.Tensor]:
    """Integer targets per head; -100 (ignored by cross-entropy) where a head does not apply."""
    t: dict[str, list[int]] = {k: [] for k in HEADS}
    for s in scenes:
        t["count"].append(len(s.objects) - 1)
        t["background"].append(HEADS["background"].index(s.background))
        t["position"].append(POSITIONS.index(s.objects[0].position) if len(s.objects) == 1 else -100)
        for i in range(2):
            o = s.objects[i] if i < len(s.objects) else None
            t[f"colour{i}"].append(HEADS[f"colour{i}"].index(o.colour) if o else -100)
            t[f"shape{i}"].append(SHAPES.index(o.shape) if o else -100)
            t[f"size{i}"].append(SIZES.index(o.size) if o else -100)
    return {k: torch.tensor(v) for k, v in t.items()}
