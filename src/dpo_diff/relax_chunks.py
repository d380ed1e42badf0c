"""Long prompts: CLIP token chunks, exact and relaxed (SD 1.x/2.x and SDXL).

A prompt over the text encoder's 77 tokens is encoded as compel and the popular web UIs do: its tokens (without
BOS/EOS) are cut into chunks of 75, each chunk is written as ``BOS, tokens, EOS, padding`` and encoded on its own,
and the chunks' hidden states are concatenated (``Tensor[B, 77 * n, D]``). A prompt that fits one chunk is exactly
the ordinary 77-token encoding. The negative prompt is padded with empty chunks (``BOS, EOS, padding``) to the
prompt's chunk count and vice versa, as those tools do; a pooled vector (SDXL) comes from the first chunk.

The relaxation (:class:`ChunkedTemplate`) lays the expected token sequence of :class:`~dpo_diff.relax.PromptTemplate`
into the same chunks: a slot's option length shifts the later tokens, across chunk boundaries too, and every chunk's
EOS and padding move with the content. So each one-hot corner encodes exactly as its rendered text, in every chunk.
Where the corners of a space need different chunk counts, the relaxation keeps the largest and :func:`key_mask`
hides a chunk from cross-attention with the probability that no side needs it: at a corner that needs fewer chunks
the denoiser sees exactly its own chunks (:func:`~dpo_diff.relax_gaps.corner_gaps` compares the text encoder's states,
the texts padded with empty chunks to the relaxation's count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from dpo_diff.relax import PromptTemplate, PromptTooLongError, mixed_ids, negative_template, positive_template

MAX_CHUNKS = 8
"""Chunks a prompt may take (8 x 75 = 600 tokens): longer prompts are refused with a clear error."""

_EOS, _PAD = -1, -2  # sentinel ids: tell EOS and padding apart from content tokens with the same id ("!" in SD 2.x)


def content_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS, never truncated."""
    return list(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def chunk_count(n_tokens: int, length: int = 77) -> int:
    """Chunks needed by ``n_tokens`` content tokens (at least one)."""
    return max(1, math.ceil(n_tokens / (length - 2)))


def chunk_ids(content: Sequence[int], tokenizer, length: int = 77, chunks: int = 1) -> list[int]:
    """``content`` laid out as ``max(chunks, needed)`` chunks of ``length`` tokens (``BOS, tokens, EOS, pad...``)."""
    per = length - 2
    out: list[int] = []
    for j in range(max(chunks, chunk_count(len(content), length))):
        row = [tokenizer.bos_token_id, *content[j * per:(j + 1) * per], tokenizer.eos_token_id]
        out += row + [tokenizer.pad_token_id] * (length - len(row))
    return out


def _with_ids(vocab: Tensor, probs: Tensor, ids: Sequence[int]) -> tuple[Tensor, Tensor, dict[int, int]]:
    """Add zero-probability columns for the ``ids`` missing from ``vocab``; also return each id's column."""
    known = {int(t): i for i, t in enumerate(vocab.tolist())}
    extra = [t for t in dict.fromkeys(int(t) for t in ids) if t not in known]
    known.update({t: len(known) + i for i, t in enumerate(extra)})
    return torch.cat([vocab, torch.tensor(extra, dtype=torch.long)]), nn.functional.pad(probs, (0, len(extra))), known


@dataclass
class ChunkedTemplate:
    """One side's relaxation laid into ``chunks`` chunks of ``length`` tokens (see the module docstring).

    ``flat``: the side's :class:`PromptTemplate` as one long sequence (``BOS, content, EOS, padding``) long enough
    for every layout. Offers what :func:`encode_side` and :func:`~dpo_diff.relax_gaps.corner_gaps` use of a template:
    ``slots``, ``input_ids`` (placeholders: the longest layout), ``corner_ids`` and ``mix``.
    """

    flat: PromptTemplate
    chunks: int
    length: int
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def slots(self):
        return self.flat.slots

    @property
    def slot_indices(self) -> list[int]:
        return self.flat.slot_indices

    def _content(self, flat_ids: list[int]) -> list[int]:
        end = flat_ids.index(self.eos_id, 1)
        return flat_ids[1:end]

    def _layout(self, content: list[int]) -> list[int]:
        per, out = self.length - 2, []
        for j in range(self.chunks):
            row = [self.bos_id, *content[j * per:(j + 1) * per], self.eos_id]
            out += row + [self.pad_id] * (self.length - len(row))
        return out

    @property
    def input_ids(self) -> Tensor:
        """``LongTensor[chunks * length]``: the longest layout (its tokens only placeholders under a mixture)."""
        return torch.tensor(self._layout(self._content(self.flat.input_ids.tolist())), dtype=torch.long)

    def corner_ids(self, candidate: Sequence[int]) -> list[int]:
        """The chunked token ids the relaxation encodes at the one-hot corner ``candidate``."""
        return self._layout(self._content(self.flat.corner_ids(candidate)))

    def stream_probs(self, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(vocab[V], content[..., C, V], length[..., C + 1])`` over the ``C = chunks * (length - 2)`` content
        positions: the probability of each content token at each position and of each content length."""
        flat = self.flat
        vocab, probs = replace(flat, eos_id=_EOS, pad_id=_PAD).token_probs(weights)
        keep = vocab >= 0
        eos_col = int((vocab == _EOS).nonzero())
        vocab, content, eos = vocab[keep], probs[..., keep], probs[..., eos_col]
        # Positions before the first slot (BOS aside) are fixed: one-hot rows.
        prefix = flat.input_ids[1:flat.mix_start]
        vocab, content, known = _with_ids(vocab, content, prefix.tolist())
        fixed = content.new_zeros(*content.shape[:-2], len(prefix), len(vocab))
        if len(prefix):
            fixed[..., torch.arange(len(prefix)), torch.tensor([known[int(t)] for t in prefix])] = 1.0
        c = self.chunks * (self.length - 2)
        content = torch.cat([fixed, content], -2)[..., :c, :]  # stream position i = flat position i + 1
        length = nn.functional.pad(eos, (len(prefix), 0))[..., : c + 1]
        return vocab, content, length

    def token_probs(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``(vocab[V], probs[..., chunks * length, V])``: each chunked position's token distribution."""
        vocab, content, length = self.stream_probs(weights)
        per = self.length - 2
        vocab, content, known = _with_ids(vocab, content, [self.bos_id, self.eos_id, self.pad_id])
        cdf = torch.cumsum(length, -1)  # cdf[l] = P(len <= l)
        rows = []
        for j in range(self.chunks):
            lo = j * per
            # m = tokens in chunk j: P(m = 0) = P(len <= lo), P(m = r) = P(len = lo + r),
            # P(m = per) = P(len >= lo + per)
            m = torch.cat([cdf[..., lo:lo + 1], length[..., lo + 1:lo + per],
                           1 - cdf[..., lo + per - 1:lo + per]], -1)  # [..., per + 1]
            below = nn.functional.pad(torch.cumsum(m, -1)[..., :-1], (1, 0))  # P(m < r): padding at r
            chunk = nn.functional.pad(content[..., lo:lo + per, :], (0, 0, 1, 1))  # BOS row, last row: EOS or pad
            add = torch.zeros_like(chunk)
            add[..., 0, known[self.bos_id]] = 1.0
            add[..., 1:, known[self.eos_id]] = m
            add[..., 1:, known[self.pad_id]] += below
            rows.append(chunk + add)
        return vocab, torch.cat(rows, -2)

    def chunk_probs(self, weights: Tensor) -> Tensor:
        """``Tensor[..., chunks]``: the probability that the side's own text needs chunk j (1 for the first)."""
        per = self.length - 2
        cdf = torch.cumsum(self.stream_probs(weights)[2], -1)
        return torch.cat([torch.ones_like(cdf[..., :1]), 1 - cdf[..., per:-1:per]], -1)

    def mix(self, weights: Tensor, table: Tensor) -> Tensor:
        """Expected token embeddings ``Tensor[..., chunks * length, D]`` (``table`` on the weights' device)."""
        vocab, probs = self.token_probs(weights)
        return probs @ table[vocab.to(table.device)].to(probs.dtype)


def key_mask(sides: Sequence[PromptTemplate | ChunkedTemplate], weights: Tensor) -> Tensor | None:
    """Cross-attention visibility ``Tensor[rows, chunks * length]`` of the relaxed chunks, or ``None`` when every
    chunk is always there.

    Exact generation gives a row as many chunks as its prompt or negative prompt (``sides``: those guidance uses)
    needs; the relaxation keeps the most any corner needs. A chunk is visible with the probability that some side
    needs it (sides choose independently), so at a one-hot corner the chunks it lacks are masked out exactly. The
    mask carries no gradient (the UNet adds log p to the cross-attention logits: :mod:`dpo_diff.backends.key_bias`).
    """
    chunked = [t for t in sides if isinstance(t, ChunkedTemplate)]
    if not chunked:
        return None
    absent = 1.0
    for t in chunked:
        absent = absent * (1 - t.chunk_probs(weights.detach().float()))
    visible = (1 - absent).repeat_interleave(chunked[0].length, -1)
    if bool((visible == 1).all()):
        return None
    return visible.reshape(-1, visible.shape[-1])


def first_chunk_eos(template: PromptTemplate | ChunkedTemplate, weights: Tensor) -> Tensor:
    """``Tensor[..., length]``: where EOS lands in the (first) chunk under slot mixtures ``weights`` (exactly one
    position at a one-hot corner; for the pooled vector of SDXL's second text encoder)."""
    if isinstance(template, ChunkedTemplate):
        vocab, probs = template.token_probs(weights)
        first = probs[..., : template.length, :]
        col = int((vocab == template.eos_id).nonzero())
        eos = first[..., col]
        if template.eos_id == template.pad_id:  # P(EOS at p) = P(first EOS at p) - P(padding at p): take the steps
            return eos - nn.functional.pad(eos[..., :-1], (1, 0))
        return eos
    vocab, probs = replace(template, eos_id=_EOS, pad_id=_PAD).token_probs(weights)
    eos = probs[..., int((vocab == _EOS).nonzero())]
    return nn.functional.pad(eos, (template.mix_start, 0))


def chunked_hook(template: ChunkedTemplate, weights: Tensor):
    """Forward hook for the token-embedding module: every position of every chunk gets its expected embedding.

    The encoder runs on ``rows * chunks`` sequences of ``length`` tokens (:meth:`TextView.run` splits them);
    ``weights`` as in :func:`~dpo_diff.relax.mixture_hook` (``[S, O]`` or ``[B, S, O]``, any device).
    """

    def hook(module: nn.Embedding, inputs, output: Tensor) -> Tensor:
        table = module.weight
        mix_dtype = torch.promote_types(torch.promote_types(weights.dtype, table.dtype), torch.float32)
        mixed = template.mix(weights.to(table.device, mix_dtype), table)  # [..., chunks * length, D]
        return mixed.reshape(-1, template.length, mixed.shape[-1]).to(output.dtype)

    return hook


def side_inputs(template: PromptTemplate | ChunkedTemplate, weights: Tensor):
    """``(input_ids[rows, L], hook)`` running one side through a text encoder with slot mixtures ``weights``."""
    if not isinstance(template, ChunkedTemplate):
        return mixed_ids(template, weights)
    if weights.ndim not in (2, 3):
        raise ValueError(f"weights must be [S, O] or [B, S, O], got shape {tuple(weights.shape)}")
    rows = 1 if weights.ndim == 2 else weights.shape[0]
    return template.input_ids[None].expand(rows, -1), (chunked_hook(template, weights) if template.slots else None)


def encode_side(view, template: PromptTemplate | ChunkedTemplate, weights: Tensor) -> Tensor:
    """The view's last hidden state ``Tensor[rows, L, D]`` for one side with slot mixtures (chunks concatenated)."""
    ids, hook = side_inputs(template, weights)
    return view.encode_ids(ids, embedding_hook=hook)


def _flat(build, space, tokenizer, length: int, chunks: int = MAX_CHUNKS) -> PromptTemplate:
    return build(space, tokenizer, 2 + chunks * (length - 2))


def view_template(build, space, view) -> PromptTemplate | ChunkedTemplate:
    """One side's template (``build``: :func:`~dpo_diff.relax.positive_template` or ``negative_template``) for a
    view that does not chunk: the ordinary one where every layout fits ``view.max_length``. Past it, a view that
    truncates as its tokenizer does (``view.truncates``: SD 3's and FLUX's CLIPs, as their pipelines) gets the
    one-chunk layout of the whole side, BOS, the first ``max_length - 2`` tokens and EOS at every corner (a slot past
    the cut reaches that encoder not at all); any other view refuses the prompt (:class:`PromptTooLongError`)."""
    try:
        return build(space, view.tokenizer, view.max_length)
    except PromptTooLongError:
        if not getattr(view, "truncates", False):
            raise
    tok = view.tokenizer
    try:
        flat = _flat(build, space, tok, view.max_length)
    except PromptTooLongError as e:
        raise PromptTooLongError(f"{e} (the relaxation lays out at most {MAX_CHUNKS * (view.max_length - 2)} "
                                 f"tokens before the {view.name} cuts them at {view.max_length})") from None
    # rebuilt just long enough for the longest layout: the expected-layout recursion runs over every position
    longest = flat.input_ids.tolist().index(tok.eos_token_id, 1) + 1
    return ChunkedTemplate(build(space, tok, longest), 1, view.max_length, tok.bos_token_id, tok.eos_token_id,
                           tok.pad_token_id)


def side_templates(space, view) -> dict[str, PromptTemplate | ChunkedTemplate]:
    """``{"positive": ..., "negative": ...}`` templates of ``space`` for one text view.

    A view that does not chunk (``view.chunks`` false) gets :func:`view_template` s; for one that does, a space
    whose every layout fits one chunk gets the ordinary 77-token :class:`PromptTemplate` s; otherwise both sides
    become :class:`ChunkedTemplate` s with the same chunk count (the larger side's), as the negative prompt is
    padded to the prompt's.
    """
    builds = {"positive": positive_template, "negative": negative_template}
    if not getattr(view, "chunks", False):
        return {side: view_template(b, space, view) for side, b in builds.items()}
    try:
        flats = {side: _flat(b, space, view.tokenizer, view.max_length) for side, b in builds.items()}
    except PromptTooLongError as e:
        raise PromptTooLongError(f"{e} (long prompts are cut into at most {MAX_CHUNKS} chunks of "
                                 f"{view.max_length - 2} tokens)") from None
    tok = view.tokenizer
    n = max(chunk_count(flat.input_ids.tolist().index(tok.eos_token_id, 1) - 1, view.max_length)
            for flat in flats.values())
    if n == 1:
        return {side: b(space, tok, view.max_length) for side, b in builds.items()}
    # rebuilt just long enough for n chunks: the expected-layout recursion runs over every position
    return {side: ChunkedTemplate(_flat(b, space, tok, view.max_length, n), n, view.max_length, tok.bos_token_id,
                                  tok.eos_token_id, tok.pad_token_id) for side, b in builds.items()}


def template_chunks(template: PromptTemplate | ChunkedTemplate) -> int:
    return template.chunks if isinstance(template, ChunkedTemplate) else 1
