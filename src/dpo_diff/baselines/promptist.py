"""Promptist (Hao et al., 2022): a GPT-2 fine-tuned to rewrite a user prompt into one that renders better.

The paper's improvement baseline. Usage as published on the model card: the input is ``"<prompt> Rephrase:"``,
decoding is deterministic beam search (8 beams, up to 75 new tokens, length penalty -1) and the first beam is the
rewrite; the tokenizer is GPT-2's (the ``microsoft/Promptist`` repository may not ship one, so ``tokenizer="gpt2"``
is the fallback).

Example::

    rw = PromptistRewriter.from_pretrained("microsoft/Promptist", device="cuda")
    rw.rewrite(["a cat on a sofa"])  # ['a cat on a sofa, highly detailed, digital painting, artstation, ...']

:func:`save_tiny_rewriter` saves a tiny random GPT-2 with a byte-level tokenizer, loadable the same way, so tests and
smoke runs exercise loading and generation offline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIX = " Rephrase:"


@dataclass(frozen=True)
class PromptistConfig:
    """Decoding settings of the Promptist model card."""

    num_beams: int = 8
    max_new_tokens: int = 75
    length_penalty: float = -1.0  # negative: prefers shorter beams among equally likely ones


class PromptistRewriter:
    """Rewrites prompts with a causal LM (deterministic: beam search, no sampling)."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu",
                 config: PromptistConfig | None = None, source: str = "") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.config = config or PromptistConfig()
        self.source = source

    @classmethod
    def from_pretrained(cls, model: str = "microsoft/Promptist", *, tokenizer: str | None = None,
                        device: str = "cpu", config: PromptistConfig | None = None) -> PromptistRewriter:
        """Load the model (hub id or folder) and its tokenizer: ``tokenizer`` if given, else the model folder's,
        else GPT-2's."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        errors = []
        tok = None
        for src in ([tokenizer] if tokenizer else [model, "gpt2"]):
            try:
                tok = AutoTokenizer.from_pretrained(src)
                break
            except (OSError, ValueError) as e:
                errors.append(f"{src}: {str(e).splitlines()[0]}")
        if tok is None:
            raise FileNotFoundError(f"no tokenizer for the Promptist rewriter ({'; '.join(errors)}); give "
                                    f"--promptist-tokenizer with a local GPT-2 tokenizer folder")
        try:
            lm = AutoModelForCausalLM.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"could not load the Promptist model {model!r}: {str(e).splitlines()[0]}; "
                                    f"download it first (it is microsoft/Promptist on the Hugging Face hub) or pass "
                                    f"a local folder") from e
        return cls(lm, tok, device=device, config=config, source=model)

    def rewrite(self, prompts: Sequence[str]) -> list[str]:
        """One rewrite per prompt (the top beam's new text, stripped; the input prompt when that is empty)."""
        import torch

        eos = self.tokenizer.eos_token_id
        out = []
        for prompt in prompts:
            # One prompt per call: padding a batch would shift positions and change the beams.
            ids = self.tokenizer(prompt.strip() + SUFFIX, return_tensors="pt").input_ids.to(self.device)
            with torch.no_grad():
                gen = self.model.generate(ids, do_sample=False, num_beams=self.config.num_beams,
                                          num_return_sequences=1, max_new_tokens=self.config.max_new_tokens,
                                          length_penalty=self.config.length_penalty, eos_token_id=eos,
                                          pad_token_id=eos)
            text = self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            text = " ".join(text.replace("\ufffd", "").split())
            out.append(text or prompt)
        return out

    def describe(self) -> dict[str, Any]:
        return {"model": self.source, "num_beams": self.config.num_beams,
                "max_new_tokens": self.config.max_new_tokens, "length_penalty": self.config.length_penalty}


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the rest are shifted past 255 so
    every byte has a visible, non-whitespace character."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, shift = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shift))
            shift += 1
    return chars


def save_tiny_rewriter(path: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random GPT-2 (2 layers, width 32) with a merge-free byte-level GPT-2 tokenizer to ``path``."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_byte_alphabet())}
    eos = len(vocab)
    vocab["<|endoftext|>"] = eos
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer",
                                                            "model_max_length": 256}))
    tok = AutoTokenizer.from_pretrained(str(path))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=eos + 1, n_positions=256,
                                           bos_token_id=eos, eos_token_id=eos))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
