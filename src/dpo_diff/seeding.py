"""Explicit randomness: every random stream of a run is derived from one root seed.

The library never seeds globally. Latents for image seed ``s`` come from ``torch.Generator("cpu").manual_seed(s)``,
exactly as a diffusers user would write it, so a seed gives the same image on any device and matches
``StableDiffusionPipeline(..., generator=torch.Generator("cpu").manual_seed(s))``.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any


def derive_seed(root: int, *labels: Any) -> int:
    """A 63-bit seed for the stream named by ``labels`` (stable across runs, platforms and Python versions)."""
    key = repr((int(root), *labels)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def rng(root: int, *labels: Any) -> random.Random:
    """A Python ``random.Random`` for a named stream (used by the discrete searches)."""
    return random.Random(derive_seed(root, *labels))


def torch_generator(root: int, *labels: Any):  # -> torch.Generator
    """A CPU ``torch.Generator`` for a named stream (Gumbel noise, sampling from the learned distribution)."""
    import torch

    return torch.Generator("cpu").manual_seed(derive_seed(root, *labels))


def latent_generator(image_seed: int):  # -> torch.Generator
    """The CPU generator that draws the initial latents for image seed ``image_seed``."""
    import torch

    return torch.Generator("cpu").manual_seed(int(image_seed))


def parse_seeds(text: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Parse ``"0,1,2"`` or ``"0-3"`` (inclusive) into a tuple of distinct non-negative seeds."""
    if isinstance(text, (list, tuple)):
        seeds = [int(s) for s in text]
    else:
        seeds = []
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    seeds.extend(range(int(a), int(b) + 1))
                else:
                    seeds.append(int(part))
            except ValueError as e:
                raise ValueError(f"bad seed list {text!r}: use comma-separated integers like '0,1,2' or '0-4'") from e
    if not seeds:
        raise ValueError(f"seed list {text!r} is empty; give at least one seed, e.g. '0'")
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed list {text!r} repeats a seed; each seed must appear once")
    return tuple(seeds)
