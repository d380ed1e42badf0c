"""The shapes world's ground-truth checker as an evaluation judge: loss ``1 - all_correct`` per image.

It reads the scene back from the image and compares it with what the prompt claims
(:mod:`dpo_diff.world.checker`). It has no gradient, so it can evaluate searches (``--eval-judges checker``) but
never drive them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class CheckerJudge:
    def __init__(self, checker) -> None:
        self.checker = checker
        self.name = "checker"

    @classmethod
    def load(cls, device: str = "cpu") -> CheckerJudge:
        from dpo_diff.world import load_checker

        return cls(load_checker(device=device))

    @property
    def backbone(self) -> object:
        return self

    def features(self, images: Tensor) -> Tensor:
        return images

    def loss_from_features(self, images: Tensor, texts: Sequence[str] | str) -> Tensor:
        texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
        scores = self.checker.score(images.detach(), texts)
        return torch.tensor([0.0 if s.all_correct else 1.0 for s in scores])

    def loss(self, images: Tensor, texts: Sequence[str] | str) -> Tensor:
        """1 where the checker finds any claim of the text wrong in the image, else 0 (``Tensor[B]``)."""
        return self.loss_from_features(images, texts)
