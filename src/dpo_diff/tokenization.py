"""Tokenizer awareness: how each option of a search space tokenizes for the chosen text encoder.

Gradient search (GPO) mixes the token embeddings of a slot's options, which is simplest when every option is one
token; the reference drops multi-token options. The report lets users see what gradient search can use for their
model (evolutionary search uses every option). Default tokenizer: the vendored CLIP BPE of Stable Diffusion 1.x.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_diff.space import SearchSpace

VENDORED_CLIP = Path(__file__).resolve().parent / "data" / "clip_tokenizer"
_MIN_VOCAB = 1000  # transformers 5 silently returns a 3-token tokenizer when the files are missing


def load_tokenizer(model: str | os.PathLike[str] | None = None) -> Any:
    """CLIP tokenizer of a diffusers model folder or hub id (its ``tokenizer`` subfolder), of a tokenizer folder,
    or (``None``) the vendored SD 1.x tokenizer. Raises ``ValueError`` when what loads is not a real tokenizer."""
    from transformers import CLIPTokenizer

    if model is None:
        tok = CLIPTokenizer.from_pretrained(str(VENDORED_CLIP))
    else:
        src = str(model)
        tok = None
        errors = []
        for kwargs in ({"subfolder": "tokenizer"}, {}):
            if Path(src).is_dir() and not (Path(src) / kwargs.get("subfolder", "")).joinpath("vocab.json").is_file():
                continue
            try:
                tok = CLIPTokenizer.from_pretrained(src, **kwargs)
                break
            except (OSError, ValueError) as e:
                errors.append(str(e).splitlines()[0])
        if tok is None:
            raise ValueError(f"no CLIP tokenizer found for model {src!r} (looked for a 'tokenizer' subfolder and for "
                             f"vocab.json/merges.txt in the folder itself{'; ' + errors[-1] if errors else ''}); give "
                             "a diffusers model folder or hub id, or leave --model out for the SD 1.x tokenizer")
    if len(tok) < _MIN_VOCAB:
        raise ValueError(f"the tokenizer loaded for {model!r} has only {len(tok)} entries; its vocab.json/merges.txt "
                         "are missing or broken")
    return tok


@dataclass(frozen=True)
class OptionTokens:
    option: str
    tokens: tuple[str, ...]

    @property
    def single(self) -> bool:
        return len(self.tokens) == 1


@dataclass(frozen=True)
class SlotTokens:
    slot: int
    word: str
    target: str
    options: tuple[OptionTokens, ...]

    @property
    def single_token_options(self) -> int:
        """Options usable as one token (the empty option of negative slots counts: it needs no token)."""
        return sum(1 for o in self.options if o.single or not o.option)


def tokenization_report(space: SearchSpace, tokenizer: Any) -> list[SlotTokens]:
    """Per slot and option, the tokens the text encoder sees (as a separate word, with CLIP's ``</w>`` marks)."""
    out = []
    for i, slot in enumerate(space.slots):
        opts = tuple(OptionTokens(o, tuple(tokenizer.tokenize(o)) if o else ()) for o in slot.options)
        out.append(SlotTokens(i, slot.word, slot.target, opts))
    return out


def report_summary(report: list[SlotTokens]) -> dict[str, int]:
    options = sum(len(s.options) for s in report)
    single = sum(s.single_token_options for s in report)
    return {"slots": len(report), "options": options, "single_token_options": single,
            "multi_token_options": options - single}
