"""One tokenizer + text encoder pair, exact and relaxed (shared by every backbone's adapter).

A backbone with several text encoders (SDXL: two CLIPs; SD 3: two CLIPs and T5; FLUX: CLIP and T5) holds one
:class:`TextView` per encoder. Each view tokenizes with its own tokenizer, so a word slot sits at that tokenizer's
positions in that view's template (:mod:`dpo_diff.relax`), and the Gumbel-softmax mixtures go through every encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from dpo_diff.relax import PromptTooLongError


class TextView:
    """A frozen text encoder with its tokenizer.

    Args:
        tokenizer: a transformers tokenizer (CLIP BPE, T5 SentencePiece, ...).
        encoder: the text encoder module (weights already on ``device``).
        device: where the encoder runs.
        max_length: tokens per prompt (default: the tokenizer's ``model_max_length``).
        min_vocab: a tokenizer smaller than this is a placeholder built from missing files (transformers then
            silently maps every word to one id), which is refused.
        name: for messages ("text encoder 2").
        chunks: encode prompts over ``max_length`` tokens in chunks (:mod:`dpo_diff.relax_chunks`; the CLIP
            encoders of SD 1.x/2.x and SDXL) instead of refusing them.
    """

    truncates = False
    """Whether prompts over ``max_length`` tokens are cut there (as a pipeline does) rather than refused or chunked;
    the relaxation then lays out the cut text too (:func:`~dpo_diff.relax_chunks.view_template`)."""

    def __init__(self, tokenizer, encoder, *, device: torch.device, max_length: int | None = None,
                 min_vocab: int = 1000, name: str = "text encoder", chunks: bool = False) -> None:
        if len(tokenizer) < min_vocab:
            raise ValueError(
                f"the {name}'s tokenizer has only {len(tokenizer)} entries: its files are missing from the model "
                f"folder (transformers then silently builds a placeholder tokenizer); add the tokenizer folder"
            )
        if getattr(getattr(encoder, "config", None), "use_attention_mask", False):
            # The pipelines then mask the padding out of the encoder's attention; the relaxation moves padding with
            # the mixture, so no 0/1 mask matches it, and encoding without one would not be the pipeline's text.
            raise ValueError(f"the {name}'s config sets use_attention_mask=True (padding masked in the encoder), "
                             f"which is not supported; only encoders that attend to the padding "
                             f"(use_attention_mask unset or False) are")
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.device = device
        self.name = name
        self.max_length = int(max_length or tokenizer.model_max_length)
        self.chunks = chunks

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """The token-embedding table the word mixtures are spliced into (through a forward hook)."""
        return self.encoder.get_input_embeddings()

    def tokenize(self, texts: Sequence[str], chunks: int = 1) -> Tensor:
        """``LongTensor[B, max_length]``, padded and truncated as the diffusers pipelines do; for a chunking view
        whose texts need more than one chunk, or ``chunks > 1``: ``LongTensor[B, n * max_length]``, every row
        padded with empty chunks to the same ``n`` (:func:`~dpo_diff.relax_chunks.chunk_ids`)."""
        if self.chunks:
            from dpo_diff.relax_chunks import chunk_count, chunk_ids, content_ids

            content = [content_ids(self.tokenizer, t) for t in texts]
            n = max([chunks, *(chunk_count(len(c), self.max_length) for c in content)])
            if n > 1:
                return torch.tensor([chunk_ids(c, self.tokenizer, self.max_length, n) for c in content])
        return self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt").input_ids

    def chunk_count(self, text: str) -> int:
        """Chunks ``text`` takes (1 for a view that does not chunk)."""
        from dpo_diff.relax_chunks import chunk_count

        return chunk_count(self.count_tokens(text) - 2, self.max_length) if self.chunks else 1

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` including the special tokens the tokenizer adds."""
        return len(self.tokenizer(text, truncation=False).input_ids)

    def check_prompt(self, text: str) -> None:
        n = self.count_tokens(text)
        if self.chunks:
            from dpo_diff.relax_chunks import MAX_CHUNKS

            if n - 2 > MAX_CHUNKS * (self.max_length - 2):
                raise PromptTooLongError(
                    f"the prompt {text[:60]!r} has {n - 2} tokens but the {self.name} takes at most {MAX_CHUNKS} "
                    f"chunks of {self.max_length - 2}; shorten it")
        elif n > self.max_length:
            raise PromptTooLongError(f"the prompt {text[:60]!r} has {n} tokens but the {self.name} takes "
                                     f"{self.max_length}; shorten it")

    def run(self, input_ids: Tensor, *, embedding_hook: Callable | None = None, **kwargs):
        """The encoder's raw output for ``input_ids`` (``kwargs`` go to its forward, e.g. output_hidden_states).

        ``embedding_hook`` (a forward hook for the token-embedding module) may replace token embeddings, which is
        how the Gumbel-softmax mixtures go *through* the text encoder: transformers 5's ``CLIPTextModel.forward``
        takes no ``inputs_embeds``. EOS pooling still reads ``input_ids``, so callers keep the true EOS there.
        Chunked ids ``[B, n * L]`` run as ``B * n`` sequences of ``L`` tokens (row b's chunks: rows ``b * n`` on).
        """
        input_ids = input_ids.reshape(-1, self.max_length) if input_ids.shape[-1] > self.max_length else input_ids
        with self.hooked(embedding_hook):
            return self.encoder(input_ids.to(self.device), **kwargs)

    def join_chunks(self, hidden: Tensor, rows: int) -> Tensor:
        """``[rows * n, L, D]`` chunk outputs of :meth:`run` -> ``[rows, n * L, D]``."""
        return hidden.reshape(rows, -1, hidden.shape[-1])

    def encode_ids(self, input_ids: Tensor, *, embedding_hook: Callable | None = None) -> Tensor:
        """Last hidden state ``Tensor[B, L, D]`` of ``input_ids[B, L]`` (chunks concatenated for ``[B, n * L]``)."""
        hidden = self.run(input_ids, embedding_hook=embedding_hook).last_hidden_state  # not [0]: a projection
        # model (SDXL's second encoder) puts its pooled text_embeds there
        return self.join_chunks(hidden, input_ids.shape[0])

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.encode_ids(self.tokenize(texts))

    @contextlib.contextmanager
    def hooked(self, hook: Callable | None) -> Iterator[None]:
        handle = self.token_embedding.register_forward_hook(hook) if hook is not None else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
