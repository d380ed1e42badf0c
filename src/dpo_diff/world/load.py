"""Load the shipped shapes-world models, checking their files first so a broken install fails with a clear message.

A missing or corrupted file raises :class:`WorldModelError` naming the file and the command that rebuilds it,
instead of the libraries' own errors (or, for a tokenizer with missing files, no error at all: ``CLIPTokenizer``
silently falls back to a 3-token vocabulary).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpo_diff.world.paths import REBUILD_COMMAND, checker_path, generator_path, judge_path, vqa_path

CLIP_VOCAB_SIZE = 49408

_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
EXPECTED_FILES: dict[str, tuple[str, ...]] = {
    "generator": (
        "model_index.json", "scheduler/scheduler_config.json", *(f"tokenizer/{f}" for f in _TOKENIZER_FILES),
        "text_encoder/config.json", "text_encoder/model.safetensors", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ),
    "judge": ("config.json", "model.safetensors", "preprocessor_config.json", *_TOKENIZER_FILES),
    "checker": ("config.json", "model.safetensors"),
    "vqa": ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"),
}
_STAGE = {"generator": "vae,generator", "judge": "judge", "checker": "checker", "vqa": "vqa"}


class WorldModelError(RuntimeError):
    """A shapes-world model folder is missing a file or holds a corrupted one."""


def _rebuild_hint(kind: str) -> str:
    return (f"rebuild it with `{REBUILD_COMMAND} --stages {_STAGE[kind]}` (or `{REBUILD_COMMAND} --export-only` "
            f"if its training checkpoints still exist), or reinstall dpo-diff")


def verify_model_folder(kind: str, folder: str | Path | None = None) -> Path:
    """Check that every file of a ``kind`` (``"generator"``, ``"judge"``, ``"checker"``, ``"vqa"``) folder exists
    and parses.

    Returns the folder. Raises :class:`WorldModelError` naming the first bad file.
    """
    if kind not in EXPECTED_FILES:
        raise ValueError(f"kind must be one of {sorted(EXPECTED_FILES)}, got {kind!r}")
    default = {"generator": generator_path, "judge": judge_path, "checker": checker_path, "vqa": vqa_path}[kind]()
    root = Path(folder) if folder is not None else default
    for rel in EXPECTED_FILES[kind]:
        f = root / rel
        if not f.is_file():
            raise WorldModelError(f"shapes-world {kind}: file {f} is missing; {_rebuild_hint(kind)}")
        try:
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".safetensors":
                from safetensors import safe_open

                # Opening validates the header against the file length; reading each tensor catches truncation.
                with safe_open(str(f), framework="numpy") as st:
                    for key in st.keys():
                        st.get_tensor(key)
            elif f.name == "merges.txt" and len(f.read_text().splitlines()) < 48000:
                raise ValueError("fewer merge rules than the CLIP BPE has")
        except Exception as exc:  # any parse failure means the same thing to the user: this file is broken
            raise WorldModelError(
                f"shapes-world {kind}: file {f} is corrupted ({type(exc).__name__}: {exc}); {_rebuild_hint(kind)}"
            ) from exc
    return root


def load_generator(folder: str | Path | None = None, device: str = "cpu") -> Any:
    """The generator as a ``diffusers.StableDiffusionPipeline`` (float32, progress bar off)."""
    root = verify_model_folder("generator", folder)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(root), local_files_only=True)
    if len(pipe.tokenizer) != CLIP_VOCAB_SIZE:
        raise WorldModelError(f"shapes-world generator: tokenizer in {root / 'tokenizer'} has {len(pipe.tokenizer)} "
                              f"tokens, expected {CLIP_VOCAB_SIZE}; {_rebuild_hint('generator')}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_judge(folder: str | Path | None = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """``(CLIPModel, CLIPTokenizer, CLIPImageProcessor)`` of the judge."""
    root = verify_model_folder("judge", folder)
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(root), local_files_only=True)
    if len(tok) != CLIP_VOCAB_SIZE:
        raise WorldModelError(f"shapes-world judge: tokenizer in {root} has {len(tok)} tokens, expected "
                              f"{CLIP_VOCAB_SIZE}; {_rebuild_hint('judge')}")
    model = CLIPModel.from_pretrained(str(root), local_files_only=True).eval().to(device)
    proc = CLIPImageProcessor.from_pretrained(str(root), local_files_only=True)
    return model, tok, proc
