"""The shapes world: a small, fully trained text-to-image world with a ground truth.

Scenes of one or two coloured shapes (:mod:`.scene`), a deterministic renderer (:mod:`.render`), an English caption
grammar with synonym/antonym tables (:mod:`.captions`), held-out prompt sets (:mod:`.prompts`), the world's own
substitutes for building search spaces (:mod:`.substitutes`), and shipped models: a Stable-Diffusion-format generator,
a CLIP judge and a ground-truth checker (:mod:`.paths`, :mod:`.load`, :mod:`.checker`).

Importing this package is cheap (numpy only); torch, diffusers and transformers are imported by the loaders.
"""

from __future__ import annotations

from typing import Any

from dpo_diff.world.captions import PromptSpec, parse_caption
from dpo_diff.world.paths import checker_path, generator_path, judge_path
from dpo_diff.world.prompts import HELDOUT_COMBOS, heldout_prompts, is_heldout_caption, prompt_kind, scene_for_prompt
from dpo_diff.world.substitutes import world_substitutes

# Sampling settings measured with benchmarks/world_quality.py (see the model card in data/shapes_world).
RECOMMENDED_STEPS = 50
RECOMMENDED_GUIDANCE = 7.5
IMAGE_SIZE = 32

_LAZY = {
    "load_generator": "dpo_diff.world.load",
    "load_judge": "dpo_diff.world.load",
    "verify_model_folder": "dpo_diff.world.load",
    "WorldModelError": "dpo_diff.world.load",
    "load_checker": "dpo_diff.world.checker",
    "Checker": "dpo_diff.world.checker",
    "Faithfulness": "dpo_diff.world.checker",
    "summarize": "dpo_diff.world.checker",
    "faithfulness_metric": "dpo_diff.world.checker",
}


def __getattr__(name: str) -> Any:
    # The loaders pull in safetensors/torch; resolve them on first use so `import dpo_diff.world` stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dpo_diff.world' has no attribute {name!r}")


__all__ = [
    "HELDOUT_COMBOS", "IMAGE_SIZE", "RECOMMENDED_GUIDANCE", "RECOMMENDED_STEPS", "PromptSpec", "checker_path",
    "generator_path", "heldout_prompts", "is_heldout_caption", "judge_path", "parse_caption", "prompt_kind",
    "scene_for_prompt", "world_substitutes",
    *_LAZY,
]
