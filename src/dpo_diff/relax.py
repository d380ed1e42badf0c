"""Continuous relaxation of a search space: Gumbel-softmax word mixtures that go through the text encoder.

DPO-Diff's shortcut text gradient (paper Sec. 4) learns one logit vector per slot. Each iteration draws soft
Gumbel-softmax weights, mixes the options' *token embeddings* with them, and splices the mixture into the prompt's
token-embedding sequence **before** the text encoder (the reference code fed mixed token embeddings straight into
the UNet, bypassing the encoder; we do not).

Options may be several tokens long ("light blue", "sea-green") or empty (a negative slot's option 0). Every position
from the first slot on holds the *expected* token embedding under the slots' independent choices: an option shifts
the tokens after it by its own length, and EOS and padding move with them (:meth:`PromptTemplate.token_probs`). So
each one-hot corner encodes exactly as its rendered text (all 77 hidden states, whatever the pad token:
``<|endoftext|>`` in SD 1.x, ``!`` in SD 2.x), and :func:`~dpo_diff.relax_gaps.corner_gaps` measures what is left
where a tokenizer does not split the rendered text at the pieces' boundaries. This is only the *relaxation* used for
gradients: discrete candidates are always scored on their exactly tokenized text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dpo_diff.space import Candidate, SearchSpace, _match_case, prompt_words


class PromptTooLongError(ValueError):
    """The prompt (or its relaxed template) does not fit the text encoder's 77 tokens."""


@dataclass
class SlotTokens:
    """The token choices of one slot (``slot == -1``: the fixed negative prompt, a term that is always written).

    ``option_ids`` holds each option's tokens, right-padded with the pad token to the longest option. An option of
    length 0 writes nothing. A term whose last tokens merge with a following comma ("blurry." + "," tokenizes as
    "blurry" ".,") holds those ``held`` tokens back until the next term decides between them and the merged ones.
    """

    slot: int  # index into SearchSpace.slots
    start: int  # first token position of the slot in the template's longest layout (``input_ids``)
    option_ids: Tensor  # LongTensor[O, L], padded with the pad token
    lengths: tuple[int, ...]  # real token count of each option
    held: tuple[int, ...] = ()  # per option: trailing tokens held back (see above)
    after: tuple[int, ...] = ()  # per option: the state after writing it (indexes PromptTemplate.joins/tails)

    def body(self, option: int) -> list[int]:
        """The option's tokens without the held-back tail."""
        held = self.held[option] if self.held else 0
        return self.option_ids[option, : self.lengths[option] - held].tolist()

    def state_after(self, option: int) -> int:
        return self.after[option] if self.after else 1


Piece = list[int] | SlotTokens


@dataclass
class PromptTemplate:
    """Token layout of one side (positive or negative prompt).

    The relaxation is the *expected token sequence* under the slots' independent choices: every option shifts the
    tokens after it by its own length, so position ``p`` holds a mixture of every token that can land there, EOS and
    padding included (:meth:`token_probs`). At a one-hot corner this is exactly the token sequence of the rendered
    text (:meth:`corner_ids`), so the text encoder sees the same 77 embeddings as for the discrete prompt: options of
    different lengths, the empty negative option and the separators between negative terms cost nothing (as long as
    the tokenizer splits the rendered text at the pieces' boundaries, which CLIP's BPE does at spaces and between
    letters and punctuation). Positions before the first slot are left as they are.

    Writing runs through states: 0 = nothing written yet, 1 = a term written, 2... = a term written whose last tokens
    are held back. Before the next non-empty term the template writes ``joins[state]`` (``()``, ``", "``, or the
    merged tail and comma); before EOS it writes ``tails[state]``.
    """

    input_ids: Tensor  # LongTensor[77]: the longest layout, then EOS and padding (one EOS only)
    slots: list[SlotTokens]  # the space's slots on this side, in layout order
    pieces: list[Piece] = field(default_factory=list)  # what follows position ``mix_start``: fixed tokens and slots
    mix_start: int = 0  # first position whose token can depend on the choice
    joins: list[tuple[int, ...]] = field(default_factory=lambda: [(), ()])
    tails: list[tuple[int, ...]] = field(default_factory=lambda: [(), ()])
    eos_id: int = 0
    pad_id: int = 0

    @property
    def slot_indices(self) -> list[int]:
        return [s.slot for s in self.slots]

    @property
    def max_length(self) -> int:
        return int(self.input_ids.shape[0])

    def _write(self, piece: Piece, option: int, state: int) -> tuple[list[int], int]:
        if not isinstance(piece, SlotTokens):
            return list(piece), (1 if piece else state)
        if piece.lengths[option] == 0:
            return [], state
        return [*self.joins[state], *piece.body(option)], piece.state_after(option)

    def corner_ids(self, candidate: Sequence[int]) -> list[int]:
        """The token ids the relaxation encodes at the one-hot corner ``candidate`` (indexed by space slot)."""
        seq = self.input_ids[: self.mix_start].tolist()
        state = 0
        for piece in self.pieces:
            option = 0 if not isinstance(piece, SlotTokens) or piece.slot < 0 else int(candidate[piece.slot])
            toks, state = self._write(piece, option, state)
            seq += toks
        seq += [*self.tails[state], self.eos_id]
        return seq + [self.pad_id] * (self.max_length - len(seq))

    def token_probs(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``(vocab LongTensor[V], probs Tensor[..., N, V])``: for each of the ``N = max_length - mix_start``
        positions from ``mix_start`` on, the probability of each token id under independent slot choices with
        probabilities ``weights[..., S, O_max]`` (rows indexed by space slot). Differentiable in ``weights``."""
        emitted, _ = self._expected_layout(weights)
        vocab = sorted(emitted)
        return torch.tensor(vocab, dtype=torch.long), torch.stack([emitted[t] for t in vocab], -1)

    def eos_probs(self, weights: Tensor) -> Tensor:
        """``Tensor[..., N]``: the probability that EOS sits at each position from ``mix_start`` on (one-hot at a
        corner). Pooled text vectors (CLIP's hidden state at EOS) are relaxed as this mixture of positions, since a
        pad token equal to EOS (SD 3's CLIP-L) makes EOS unreadable from :meth:`token_probs`."""
        return self._expected_layout(weights)[1]

    def _expected_layout(self, weights: Tensor) -> tuple[dict[int, Tensor], Tensor]:
        """Per token id, its probability at each position from ``mix_start`` on; and EOS's position distribution."""
        n = self.max_length - self.mix_start
        batch = weights.shape[:-2]
        pad = nn.functional.pad
        # dist[..., s, k]: probability of state s with k tokens written after mix_start.
        dist = weights.new_zeros(*batch, len(self.joins), n + 1)
        dist[..., 0, 0] = 1.0
        emitted: dict[int, Tensor] = {}

        def emit(tokens: Sequence[int], prob: Tensor) -> None:  # tokens written from offset k with prob[..., k]
            for j, t in enumerate(tokens):
                at = pad(prob, (j, 0))[..., :n]
                emitted[t] = emitted[t] + at if t in emitted else at

        def shift(prob: Tensor, by: int) -> Tensor:
            return pad(prob, (by, 0))[..., : n + 1] if by else prob

        for piece in self.pieces:
            fixed = not isinstance(piece, SlotTokens) or piece.slot < 0
            w = None if fixed else weights[..., piece.slot, :]
            new = [torch.zeros_like(dist[..., 0, :]) for _ in self.joins]
            for o in range(1 if fixed else len(piece.lengths)):
                for s in range(len(self.joins)):
                    p = dist[..., s, :] if fixed else w[..., o, None] * dist[..., s, :]
                    toks, s2 = self._write(piece, o, s)
                    emit(toks, p)
                    new[s2] = new[s2] + shift(p, len(toks))
            dist = torch.stack(new, -2)
        end = 0
        for s, tail in enumerate(self.tails):
            emit(tail, dist[..., s, :])
            end = end + shift(dist[..., s, :], len(tail))  # where EOS lands
        emit([self.eos_id], end)
        emit([self.pad_id], pad(torch.cumsum(end, -1)[..., : n - 1], (1, 0)))
        return emitted, end[..., :n]

    def mix(self, weights: Tensor, table: Tensor) -> Tensor:
        """Expected token embeddings ``Tensor[..., N, D]`` of positions ``mix_start:`` (``table``: the embedding
        matrix, on the weights' device; the result has the weights' dtype)."""
        vocab, probs = self.token_probs(weights)
        return probs @ table[vocab.to(table.device)].to(probs.dtype)


def _ids(tokenizer, text: str, glued: bool = False) -> list[int]:
    """Token ids of ``text`` without BOS/EOS.

    ``glued``: the text continues the word before it (no space between, e.g. ", on grass" after a slot). A
    SentencePiece tokenizer (T5) marks every word start with "▁", so tokenized alone such a piece would begin with
    a spurious "▁" (", on" gives "▁," but "dog, on" gives "▁dog" ","): it is tokenized after a one-letter
    word and that word's tokens are dropped. Spaces around a SentencePiece piece are dropped: a space before a word
    is its "▁", which the next piece writes itself (a trailing "a " would otherwise give "▁a" "▁" where the
    tokenizer does not split at whitespace first). CLIP's BPE needs neither (it splits at spaces and punctuation).
    """
    if not text.strip():
        return []
    if _marks_word_starts(tokenizer):
        if glued and not text[0].isspace():
            context = _ids(tokenizer, "a")
            ids = _ids(tokenizer, "a" + text.rstrip())
            if ids[: len(context)] == context:
                return ids[len(context) :]
        text = text.strip()
    return list(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def _marks_word_starts(tokenizer) -> bool:
    """Whether the tokenizer marks word starts SentencePiece-style ("▁word"), as T5's does."""
    ids = tokenizer("a", add_special_tokens=False).input_ids
    return bool(ids) and str(tokenizer.convert_ids_to_tokens(ids[0])).startswith("▁")


def _slot_tokens(tokenizer, slot_index: int, options: Sequence[str], glued: bool = False) -> SlotTokens:
    ids = [_ids(tokenizer, o, glued) for o in options]
    width = max(1, max(len(x) for x in ids))
    pad = tokenizer.pad_token_id
    table = torch.full((len(ids), width), pad, dtype=torch.long)
    for o, x in enumerate(ids):
        table[o, : len(x)] = torch.tensor(x, dtype=torch.long)
    return SlotTokens(slot_index, 0, table, tuple(len(x) for x in ids))


def _hold_merging_tails(tokenizer, pieces: list[Piece], texts: dict[int, Sequence[str]], comma: list[int],
                        ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Give each term that merges with a following comma its own held-back state; return ``(joins, tails)``."""
    joins, tails = [(), tuple(comma)], [(), ()]
    for piece in pieces:
        held, after = [], []
        for o, text in enumerate(texts[id(piece)]):
            alone, joined = piece.option_ids[o, : piece.lengths[o]].tolist(), _ids(tokenizer, text + ",")
            if not alone or joined == alone + comma:
                held.append(0)
                after.append(1)
                continue
            common = next((i for i, (a, b) in enumerate(zip(alone, joined)) if a != b), min(len(alone), len(joined)))
            held.append(len(alone) - common)
            after.append(len(joins))
            joins.append(tuple(joined[common:]))
            tails.append(tuple(alone[common:]))
        piece.held, piece.after = tuple(held), tuple(after)
    return joins, tails


def _finish(tokenizer, pieces: list[Piece], max_length: int, what: str,
            joins: list[tuple[int, ...]] | None = None, tails: list[tuple[int, ...]] | None = None) -> PromptTemplate:
    """Lay out BOS (T5 has none), the fixed tokens before the first slot, and the relaxed rest; refuse what cannot
    fit."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    first = next((i for i, p in enumerate(pieces) if isinstance(p, SlotTokens)), len(pieces))
    prefix = ([] if bos is None else [bos]) + [t for p in pieces[:first] for t in p]
    template = PromptTemplate(torch.tensor(prefix), [p for p in pieces if isinstance(p, SlotTokens) and p.slot >= 0],
                              pieces[first:], len(prefix), joins or [(), ()], tails or [(), ()], eos, pad)
    # The longest layout over every choice (a small search over states), also the placeholder ids: never EOS, so
    # EOS pooling on ``input_ids`` finds the one EOS at its end.
    best: dict[int, tuple[list[int], dict[int, int]]] = {0: ([], {})}
    for piece in template.pieces:
        options = range(1 if not isinstance(piece, SlotTokens) or piece.slot < 0 else len(piece.lengths))
        grown: dict[int, tuple[list[int], dict[int, int]]] = {}
        for s, (seq, starts) in best.items():
            for o in options:
                toks, s2 = template._write(piece, o, s)
                if s2 not in grown or len(seq) + len(toks) > len(grown[s2][0]):
                    at = {piece.slot: len(prefix) + len(seq)} if isinstance(piece, SlotTokens) else {}
                    grown[s2] = (seq + toks, {**starts, **at})
        best = grown
    longest, starts = max(((seq + list(template.tails[s]), st) for s, (seq, st) in best.items()),
                          key=lambda x: len(x[0]))
    filler = pad if bos is None else bos  # placeholder ids are overwritten by the mixture; never EOS
    seq = prefix + [i if i != eos else filler for i in longest] + [eos]
    if len(seq) > max_length:
        widths = {st.slot: int(st.option_ids.shape[1]) for st in template.slots}
        raise PromptTooLongError(
            f"the {what} needs {len(seq)} tokens with every slot at its longest option (slot token widths: {widths}), "
            f"but the text encoder takes {max_length}; shorten the prompt or drop long options"
        )
    for st in template.slots:
        st.start = starts.get(st.slot, len(prefix))
    template.input_ids = torch.tensor(seq + [pad] * (max_length - len(seq)), dtype=torch.long)
    return template


def positive_template(space: SearchSpace, tokenizer, max_length: int = 77) -> PromptTemplate:
    """Template of the user prompt with each positive slot's word replaced by its choices.

    Option 0 is tokenized from the prompt's own text and the others with the word's capitalisation, as
    :meth:`SearchSpace.render` writes them.
    """
    words = prompt_words(space.prompt)
    pos_slots = sorted(space.slots_of("positive"), key=lambda i: space.slots[i].position)
    pieces: list[Piece] = []
    cursor = 0
    for i in pos_slots:
        slot = space.slots[i]
        w = words[slot.position]
        pieces.append(_ids(tokenizer, space.prompt[cursor : w.start], glued=cursor > 0))
        options = [w.text, *(_match_case(w.text, o) for o in slot.options[1:])]
        glued = w.start > 0 and not space.prompt[w.start - 1].isspace()
        pieces.append(_slot_tokens(tokenizer, i, options, glued))
        cursor = w.end
    pieces.append(_ids(tokenizer, space.prompt[cursor:], glued=cursor > 0))
    return _finish(tokenizer, [p for p in pieces if p != []], max_length, "prompt")


def negative_template(space: SearchSpace, tokenizer, max_length: int = 77) -> PromptTemplate:
    """Template of the negative prompt: the user's fixed negative prompt, then one ``", "``-separated term per slot.

    The separator belongs to the term it precedes and is written only when some term comes before it, so an empty
    option contributes nothing at all, exactly as :meth:`SearchSpace.render` joins the terms.
    """
    comma = _ids(tokenizer, ",", glued=True)  # the separator is glued to the term before it
    fixed = space.negative_prompt.strip()
    pieces: list[SlotTokens] = [_slot_tokens(tokenizer, -1, [fixed])] if fixed else []
    pieces += [_slot_tokens(tokenizer, i, space.slots[i].options) for i in space.slots_of("negative")]
    texts = {id(p): ([fixed] if p.slot < 0 else space.slots[p.slot].options) for p in pieces}
    joins, tails = _hold_merging_tails(tokenizer, pieces, texts, comma)
    return _finish(tokenizer, list(pieces), max_length, "negative prompt", joins, tails)


def mixture_hook(template: PromptTemplate, weights: Tensor):
    """Forward hook for the token-embedding module that writes the weighted option embeddings into each slot.

    Args:
        template: positions and option ids of the slots on this side.
        weights: mixture weights for *all* slots of the space (rows of other sides unused): ``Tensor[S, O_max]``
            (one mixture, broadcast to every row of the batch) or ``Tensor[B, S, O_max]`` (one mixture per row; the
            embedding output must have batch 1 or B). They may live on any device and dtype (e.g. Gumbel samples
            drawn on the CPU): they are moved to the embedding table's device here, differentiably. The mixture is
            computed in at least fp32 (fp16/bf16 probabilities would round the expected embeddings) and written
            into the sequence in the table's dtype.
    """
    if weights.ndim not in (2, 3):
        raise ValueError(f"weights must be [S, O] or [B, S, O], got shape {tuple(weights.shape)}")

    def hook(module: nn.Embedding, inputs, output: Tensor) -> Tensor:
        table = module.weight
        mix_dtype = torch.promote_types(torch.promote_types(weights.dtype, table.dtype), torch.float32)
        w_all = weights.to(table.device, mix_dtype)
        if w_all.ndim == 3:
            rows = w_all.shape[0]
            if output.shape[0] not in (1, rows):
                raise ValueError(f"{rows} rows of mixture weights for a batch of {output.shape[0]} prompts")
            out = output.expand(rows, -1, -1).clone()
        else:
            out = output.clone()
        # Expected token embeddings of every position from the first slot on (EOS and padding included).
        out[:, template.mix_start :] = template.mix(w_all, table).to(out.dtype)  # [N, D] or [B, N, D]
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

    def sample_weights(self, tau: float, generator: torch.Generator, num: int | None = None) -> Tensor:
        """Soft Gumbel-softmax weights (as in the paper; tau = 1): ``Tensor[S, O_max]``, or ``Tensor[num, S, O_max]``
        (``num`` independent samples) when ``num`` is given.

        The Gumbel noise is drawn on ``generator``'s device (the CPU generators of :mod:`dpo_diff.seeding`: the same
        noise on any machine) and moved to the logits' device; the result lives there, in the logits' dtype.
        """
        shape = self.logits.shape if num is None else (int(num), *self.logits.shape)
        u = torch.rand(shape, generator=generator, dtype=torch.float32, device=generator.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))  # in fp32: the clamp bounds underflow in fp16
        gumbel = gumbel.to(self.logits.device, self.logits.dtype)
        return torch.softmax((self.masked_logits() + gumbel) / tau, dim=-1)

    def argmax(self) -> Candidate:
        return tuple(int(i) for i in self.masked_logits().argmax(-1))

    def one_hot(self, candidate: Candidate) -> Tensor:
        w = torch.zeros_like(self.logits)
        dev = w.device
        w[torch.arange(len(candidate), device=dev), torch.tensor(candidate, device=dev)] = 1.0
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


def mixed_ids(template: PromptTemplate, weights: Tensor) -> tuple[Tensor, Callable | None]:
    """``(input_ids[B, L], hook)`` that run ``template`` through a text encoder with slot mixtures ``weights``
    (``[S, O]``: one row; ``[B, S, O]``: one row per mixture). ``hook`` is ``None`` when the side has no slots."""
    if weights.ndim not in (2, 3):
        raise ValueError(f"weights must be [S, O] or [B, S, O], got shape {tuple(weights.shape)}")
    rows = 1 if weights.ndim == 2 else weights.shape[0]
    ids = template.input_ids[None].expand(rows, -1)
    return ids, (mixture_hook(template, weights) if template.slots else None)


def encode_mixed(view, template: PromptTemplate, weights: Tensor) -> Tensor:
    """Text-encoder output for the template with slot mixtures (differentiable in ``weights``).

    ``view``: anything with ``encode_ids(ids, embedding_hook=)`` (a :class:`~dpo_diff.backends.text.TextView` or
    the SD backend). ``weights[S, O]`` gives ``Tensor[1, L, D]``; ``weights[B, S, O]`` gives ``Tensor[B, L, D]``,
    row b equal to ``encode_mixed(view, template, weights[b])``. Weights may be on any device (see
    :func:`mixture_hook`).
    """
    ids, hook = mixed_ids(template, weights)
    return view.encode_ids(ids, embedding_hook=hook)
