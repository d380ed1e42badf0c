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


MAX_SEEDS = 10_000  # seeds in one list: each is at least one generation per candidate
MAX_SEED = 2**63 - 1  # the largest image seed (a signed 64-bit integer, as generators store it)


def parse_seeds(text: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Parse ``"0,1,2"`` or ``"0-3"`` (inclusive) into a tuple of distinct non-negative seeds (at most
    :data:`MAX_SEEDS` of them, each at most :data:`MAX_SEED`); a range is measured before it is expanded."""
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
                    a, b = (int(x) for x in part.split("-", 1))
                    if b - a + 1 + len(seeds) > MAX_SEEDS:
                        total = max(b - a + 1, 0) + len(seeds)
                        raise OverflowError(f"seed list {text!r} has {total} seeds; at most {MAX_SEEDS} are allowed")
                    seeds.extend(range(a, b + 1))
                else:
                    seeds.append(int(part))
            except OverflowError as e:
                raise ValueError(str(e)) from None
            except ValueError as e:
                raise ValueError(f"bad seed list {text!r}: use comma-separated integers like '0,1,2' or '0-4'") from e
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"seed list has {len(seeds)} seeds; at most {MAX_SEEDS} are allowed")
    too_large = [s for s in seeds if s > MAX_SEED]
    if too_large:
        raise ValueError(f"seed {too_large[0]} is too large: image seeds must be at most {MAX_SEED} (2**63 - 1)")
    if not seeds:
        raise ValueError(f"seed list {text!r} is empty; give at least one seed, e.g. '0'")
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed list {text!r} repeats a seed; each seed must appear once")
    return tuple(seeds)
