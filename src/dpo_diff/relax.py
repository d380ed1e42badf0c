"""Continuous relaxation of a search space: Gumbel-softmax word mixtures that go through the text encoder.

DPO-Diff's shortcut text gradient (paper Sec. 4) learns one logit vector per slot. Each iteration draws soft
Gumbel-softmax weights, mixes the options' *token embeddings* with them, and splices the mixture into the prompt's
token-embedding sequence **before** the text encoder (the reference code fed mixed token embeddings straight into
the UNet, bypassing the encoder; we do not).

Options may be several tokens long ("light blue", "sea-green"). Each slot occupies as many token positions as its
longest option; shorter options are right-padded inside the slot with the tokenizer's padding token. This is only
the *relaxation* used for gradients: discrete candidates are always scored on their exactly tokenized text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dpo_diff.space import Candidate, SearchSpace, prompt_words


class PromptTooLongError(ValueError):
    """The prompt (or its relaxed template) does not fit the text encoder's 77 tokens."""


@dataclass
class SlotTokens:
    slot: int  # index into SearchSpace.slots
    start: int  # first token position in the 77-token sequence
    option_ids: Tensor  # LongTensor[O, L], padded with the pad token
    lengths: tuple[int, ...]  # real token count of each option


@dataclass
class PromptTemplate:
    """Token layout of one side (positive or negative prompt) with the positions each slot fills."""

    input_ids: Tensor  # LongTensor[77]; slot positions hold a non-EOS placeholder so EOS pooling stays right
    slots: list[SlotTokens]

    @property
    def slot_indices(self) -> list[int]:
        return [s.slot for s in self.slots]


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS."""
    if not text.strip():
        return []
    return list(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def _slot_tokens(tokenizer, slot_index: int, options: Sequence[str], start: int) -> SlotTokens:
    ids = [_ids(tokenizer, o) for o in options]
    width = max(1, max(len(x) for x in ids))
    pad = tokenizer.pad_token_id
    table = torch.full((len(ids), width), pad, dtype=torch.long)
    for o, x in enumerate(ids):
        table[o, : len(x)] = torch.tensor(x, dtype=torch.long)
    return SlotTokens(slot_index, start, table, tuple(len(x) for x in ids))


def _finish(tokenizer, pieces: list[int | list[int]], slot_tokens: list[SlotTokens], max_length: int,
            what: str) -> PromptTemplate:
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    seq: list[int] = [bos]
    slot_iter = iter(slot_tokens)
    for piece in pieces:
        if isinstance(piece, list):
            seq.extend(piece)
        else:
            st = next(slot_iter)
            st.start = len(seq)
            # Placeholder ids: the longest option's tokens (never EOS), so pooling finds the real EOS.
            longest = st.option_ids[max(range(len(st.lengths)), key=lambda o: st.lengths[o])]
            seq.extend(int(i) if int(i) != eos else bos for i in longest)
    seq.append(eos)
    if len(seq) > max_length:
        widths = {st.slot: st.option_ids.shape[1] for st in slot_tokens}
        raise PromptTooLongError(
            f"the {what} needs {len(seq)} tokens with every slot at its longest option (slot token widths: {widths}), "
            f"but the text encoder takes {max_length}; shorten the prompt or drop long options"
        )
    seq += [pad] * (max_length - len(seq))
    return PromptTemplate(torch.tensor(seq, dtype=torch.long), slot_tokens)


def positive_template(space: SearchSpace, tokenizer, max_length: int = 77) -> PromptTemplate:
    """Template of the user prompt with each positive slot's word replaced by its mixture positions."""
    words = prompt_words(space.prompt)
    pos_slots = sorted(space.slots_of("positive"), key=lambda i: space.slots[i].position)
    pieces: list[int | list[int]] = []
    slot_tokens: list[SlotTokens] = []
    cursor = 0
    for i in pos_slots:
        w = words[space.slots[i].position]
        pieces.append(_ids(tokenizer, space.prompt[cursor : w.start]))
        pieces.append(i)
        slot_tokens.append(_slot_tokens(tokenizer, i, space.slots[i].options, 0))
        cursor = w.end
    pieces.append(_ids(tokenizer, space.prompt[cursor:]))
    return _finish(tokenizer, [p for p in pieces if p != []], slot_tokens, max_length, "prompt")


def negative_template(space: SearchSpace, tokenizer, max_length: int = 77) -> PromptTemplate:
    """Template of the negative prompt: the user's fixed negative prompt, then one comma-separated term per slot."""
    neg_slots = space.slots_of("negative")
    comma = _ids(tokenizer, ",")
    pieces: list[int | list[int]] = []
    if space.negative_prompt.strip():
        pieces.append(_ids(tokenizer, space.negative_prompt.strip()))
    slot_tokens = []
    for i in neg_slots:
        if pieces:
            pieces.append(comma)
        pieces.append(i)
        slot_tokens.append(_slot_tokens(tokenizer, i, space.slots[i].options, 0))
    return _finish(tokenizer, pieces, slot_tokens, max_length, "negative prompt")


def mixture_hook(template: PromptTemplate, weights: Tensor):
    """Forward hook for the token-embedding module that writes the weighted option embeddings into each slot.

    Args:
        template: positions and option ids of the slots on this side.
        weights: ``Tensor[S, O_max]`` mixture weights for *all* slots of the space (rows of other sides unused).
    """

    def hook(module: nn.Embedding, inputs, output: Tensor) -> Tensor:
        out = output.clone()
        for st in template.slots:
            emb = module.weight[st.option_ids.to(module.weight.device)]  # [O, L, D]
            w = weights[st.slot, : emb.shape[0]].to(emb.dtype)
            mixed = torch.einsum("o,old->ld", w, emb)
            out[:, st.start : st.start + emb.shape[1]] = mixed
        return out

    return hook


class WordMixture(nn.Module):
    """One logit vector per slot: the learned distribution over the search space (paper Sec. 4, GPO).

    Logits start at ``[1, 0, 0, ...]`` (option 0 = the user's word or no negative term), as in the paper. Slots with
    fewer options than the widest are masked out of every softmax.
    """

    def __init__(self, sizes: Sequence[int], init_first: float = 1.0) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        width = max(self.sizes, default=1)
        logits = torch.zeros(len(self.sizes), width)
        logits[:, 0] = init_first
        self.logits = nn.Parameter(logits)
        mask = torch.zeros(len(self.sizes), width, dtype=torch.bool)
        for i, s in enumerate(self.sizes):
            mask[i, :s] = True
        self.register_buffer("mask", mask, persistent=False)

    def masked_logits(self) -> Tensor:
        return self.logits.masked_fill(~self.mask, float("-inf"))

    def probs(self) -> Tensor:
        return torch.softmax(self.masked_logits(), dim=-1)

    def sample_weights(self, tau: float, generator: torch.Generator, hard: bool = False) -> Tensor:
        """Gumbel-softmax weights ``Tensor[S, O_max]`` (soft by default, as in the paper; tau = 1)."""
        u = torch.rand(self.logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10)
        gumbel = -torch.log(-torch.log(u)).to(self.logits.device)
        y = torch.softmax((self.masked_logits() + gumbel) / tau, dim=-1)
        if hard:  # straight-through: one-hot forward, soft gradient
            one_hot = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
            y = one_hot - y.detach() + y
        return y

    def argmax(self) -> Candidate:
        return tuple(int(i) for i in self.masked_logits().argmax(-1))

    def one_hot(self, candidate: Candidate) -> Tensor:
        w = torch.zeros_like(self.logits)
        w[torch.arange(len(candidate)), torch.tensor(candidate)] = 1.0
        return w

    @torch.no_grad()
    def sample_candidates(self, n: int, generator: torch.Generator, *, first_argmax: bool = True,
                          exclude: set[Candidate] | frozenset[Candidate] = frozenset(),
                          max_tries: int = 50) -> list[Candidate]:
        """Up to ``n`` distinct candidates drawn from softmax(logits), the argmax first (paper: 32 after GPO).

        Fewer are returned when the distribution cannot produce ``n`` distinct unseen candidates in
        ``max_tries * n`` draws (e.g. a tiny space).
        """
        out: list[Candidate] = []
        seen = set(exclude)
        if first_argmax and n > 0 and self.argmax() not in seen:
            out.append(self.argmax())
            seen.add(out[0])
        probs = self.probs().cpu()
        for _ in range(max_tries * max(n, 1)):
            if len(out) >= n:
                break
            cand = tuple(int(i) for i in torch.multinomial(probs, 1, generator=generator).squeeze(-1))
            if cand not in seen:
                seen.add(cand)
                out.append(cand)
        return out


def encode_mixed(backend, template: PromptTemplate, weights: Tensor) -> Tensor:
    """Text-encoder output ``Tensor[1, 77, D]`` for the template with slot mixtures (differentiable in weights)."""
    if not template.slots:
        return backend.encode_ids(template.input_ids[None])
    return backend.encode_ids(template.input_ids[None], embedding_hook=mixture_hook(template, weights))
