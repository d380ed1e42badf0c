"""Paths of data shipped inside the package (tokenizer, lexicons, bundled models)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def data_path(*parts: str) -> Path:
    return DATA_DIR.joinpath(*parts)


def clip_tokenizer_path() -> Path:
    """The real CLIP BPE tokenizer (49408 entries) used by Stable Diffusion 1.x, vendored for offline use."""
    return data_path("clip_tokenizer")
