"""Where the shipped shapes-world models live (package data) and which script rebuilds them."""

from __future__ import annotations

from pathlib import Path

REBUILD_COMMAND = "python scripts/train_world.py"


def world_data_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "shapes_world"


def generator_path() -> Path:
    """A ``StableDiffusionPipeline`` folder (``StableDiffusionPipeline.from_pretrained(generator_path())``)."""
    return world_data_dir() / "generator"


def judge_path() -> Path:
    """A ``CLIPModel`` folder with tokenizer and ``preprocessor_config.json``."""
    return world_data_dir() / "judge"


def vqa_path() -> Path:
    """The VQA judge: a transformers ``LlavaForConditionalGeneration`` folder with its tokenizer (chat template) and
    ``preprocessor_config.json`` (``vqa:world:vqa``)."""
    return world_data_dir() / "vqa"


def checker_path() -> Path:
    """The ground-truth checker's ``model.safetensors`` + ``config.json``."""
    return world_data_dir() / "checker"
