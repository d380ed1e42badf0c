"""Ground-truth checker: reads a scene's attributes back from an image and scores faithfulness to a prompt.

Independent of the CLIP judge: it is a small CNN (:mod:`dpo_diff.world.checker_model`) trained with supervised
labels on rendered scenes (blurred, noised and brightness-jittered so it also reads imperfect generated images), and
it compares what it reads with what the prompt claims as parsed by :func:`~dpo_diff.world.captions.parse_caption`.
Words the world's grammar does not know are reported in :attr:`Faithfulness.unknown_words`: the checker cannot
judge them, and a prompt with such words is flagged ``judgeable=False``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpo_diff.world.captions import ObjectSpec, PromptSpec, parse_caption
from dpo_diff.world.scene import IMAGE_SIZE

ATTRIBUTES: tuple[str, ...] = ("count", "colour", "shape", "size", "position", "background")


@dataclass(frozen=True)
class ObjectReading:
    colour: str
    shape: str
    size: str


@dataclass(frozen=True)
class SceneReading:
    """What the checker sees: objects left to right, the lone object's position, the background."""

    objects: tuple[ObjectReading, ...]
    position: str | None
    background: str


@dataclass
class Faithfulness:
    """Per-check results of one image against one prompt."""

    checks: list[tuple[str, bool]] = field(default_factory=list)  # (attribute, correct), one per claim
    unknown_words: list[str] = field(default_factory=list)

    @property
    def all_correct(self) -> bool:
        return all(ok for _, ok in self.checks)

    @property
    def judgeable(self) -> bool:
        return not self.unknown_words

    @property
    def attribute_accuracy(self) -> float:
        """The share of the prompt's claims the image gets right (1.0 for a prompt without claims)."""
        return sum(ok for _, ok in self.checks) / len(self.checks) if self.checks else 1.0

    def per_attribute(self) -> dict[str, float]:
        out: dict[str, list[bool]] = {}
        for attr, ok in self.checks:
            out.setdefault(attr, []).append(ok)
        return {k: float(np.mean(v)) for k, v in out.items()}


def _object_checks(spec: ObjectSpec, got: ObjectReading | None) -> list[tuple[str, bool]]:
    out = []
    for attr in ("colour", "shape", "size"):
        want = getattr(spec, attr)
        if want is not None:
            out.append((attr, got is not None and getattr(got, attr) == want))
    return out


def score_reading(reading: SceneReading, spec: PromptSpec) -> Faithfulness:
    """Compare a :class:`SceneReading` with a :class:`PromptSpec`."""
    result = Faithfulness(unknown_words=list(spec.unknown_words))
    if spec.background is not None:
        result.checks.append(("background", reading.background == spec.background))
    if not spec.objects:
        return result
    result.checks.append(("count", len(reading.objects) == spec.count))
    got = list(reading.objects) + [None] * (2 - len(reading.objects))
    if spec.count == 1:
        # A prompt for one object against an image with two: judge the better-matching one (count already failed).
        cands = [_object_checks(spec.objects[0], g) for g in got[: max(1, len(reading.objects))]]
        best = max(cands, key=lambda c: sum(ok for _, ok in c))
        result.checks.extend(best)
        if spec.objects[0].position is not None:
            ok = len(reading.objects) == 1 and reading.position == spec.objects[0].position
            result.checks.append(("position", ok))
        return result
    def matched(order: tuple[int, ...]) -> list[tuple[str, bool]]:
        return [c for i, j in enumerate(order) for c in _object_checks(spec.objects[i], got[j])]

    def n_ok(checks: list[tuple[str, bool]]) -> int:
        return sum(ok for _, ok in checks)

    straight, swapped = matched((0, 1)), matched((1, 0))
    if spec.ordered:
        result.checks.extend(straight)
        if any(o.position for o in spec.objects):
            # The left/right relation holds when the objects read better in the claimed order than swapped.
            result.checks.append(("position", n_ok(straight) > n_ok(swapped)))
    else:  # "X and Y": either arrangement is faithful
        result.checks.extend(straight if n_ok(straight) >= n_ok(swapped) else swapped)
    return result


def summarize(results: Sequence[Faithfulness]) -> dict[str, float]:
    """Mean per-attribute accuracy over all claims, the all-correct rate, the attribute accuracy (per image the share
    of its claims right, averaged), and the share of judgeable prompts."""
    per: dict[str, list[bool]] = {}
    for r in results:
        for attr, ok in r.checks:
            per.setdefault(attr, []).append(ok)
    out = {f"acc_{k}": float(np.mean(v)) for k, v in sorted(per.items())}
    out["all_correct"] = float(np.mean([r.all_correct for r in results])) if results else float("nan")
    out["attribute_accuracy"] = float(np.mean([r.attribute_accuracy for r in results])) if results else float("nan")
    out["judgeable"] = float(np.mean([r.judgeable for r in results])) if results else float("nan")
    out["n"] = float(len(results))
    return out


def images_to_array(images: Any) -> np.ndarray:
    """PIL images, uint8 ``(N, H, W, 3)`` / ``(H, W, 3)`` arrays, or float ``(N, 3, H, W)`` tensors/arrays in
    [0, 1] (diffusers' ``output_type="pt"``/``"np"`` gives [0, 1]) -> uint8 ``(N, 32, 32, 3)``."""
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        arrs = [np.asarray(im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
                if isinstance(im, Image.Image) else images_to_array(im)[0] for im in images]
        return np.stack(arrs).astype(np.uint8)
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        if arr.shape[1] == 3 and arr.shape[-1] != 3:
            arr = arr.transpose(0, 2, 3, 1)
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
        return images_to_array([Image.fromarray(a) for a in arr])
    return arr


class Checker:
    """The trained checker network with reading and scoring helpers (CPU is plenty: ~1 ms per image)."""

    def __init__(self, net: Any, device: str = "cpu") -> None:
        self.net = net.eval().to(device)
        self.device = device

    def read(self, images: Any) -> list[SceneReading]:
        import torch

        from dpo_diff.world.checker_model import HEADS

        arr = images_to_array(images)
        x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        with torch.no_grad():
            out = {k: v.argmax(1).cpu().tolist() for k, v in self.net(x).items()}
        readings = []
        for n in range(len(arr)):
            lab = {k: HEADS[k][out[k][n]] for k in HEADS}
            count = int(lab["count"])
            objs = tuple(ObjectReading(lab[f"colour{i}"], lab[f"shape{i}"], lab[f"size{i}"]) for i in range(count))
            readings.append(SceneReading(objs, lab["position"] if count == 1 else None, lab["background"]))
        return readings

    def score(self, images: Any, prompts: Sequence[str]) -> list[Faithfulness]:
        """Faithfulness of each image to its prompt (``len(prompts)`` must match the number of images)."""
        readings = self.read(images)
        if len(readings) != len(prompts):
            raise ValueError(f"{len(readings)} images but {len(prompts)} prompts")
        return [score_reading(r, parse_caption(p)) for r, p in zip(readings, prompts, strict=True)]


def load_checker(folder: str | Path | None = None, device: str = "cpu") -> Checker:
    """Load the shipped checker (verifying its files; see :mod:`dpo_diff.world.load`)."""
    from safetensors.torch import load_file

    from dpo_diff.world.checker_model import CheckerNet
    from dpo_diff.world.load import verify_model_folder

    root = verify_model_folder("checker", folder)
    cfg = json.loads((root / "config.json").read_text())
    net = CheckerNet(width=int(cfg.get("width", 32)))
    net.load_state_dict({k: v.float() for k, v in load_file(root / "model.safetensors").items()})
    return Checker(net, device)


def faithfulness_metric(checker, prompt: str, n_search: int):
    """Ground-truth faithfulness of the user's and the optimized images to the *user's* prompt (the first
    ``n_search`` images of each are on search seeds, the rest on report seeds)."""

    def metric(user_images, best_images, seeds) -> dict:
        out = {}
        for name, imgs in (("user", user_images), ("best", best_images)):
            scores = checker.score(imgs, [prompt] * len(imgs))
            out[name] = {"search": summarize(scores[:n_search]), "report": summarize(scores[n_search:])}
            unknown = sorted({w for s in scores for w in s.unknown_words})
            if unknown:
                out["unjudgeable_words"] = unknown
        return out

    return metric
