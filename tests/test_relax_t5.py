"""The relaxation through T5 (SD 3.x, FLUX.1): one-hot corners encode as their rendered text through every encoder.

T5 has no BOS, pads with id 0 and ends with ``</s>``; its SentencePiece tokenizer marks word starts with "▁", so a
piece glued to the word before it (", on grass" after a slot) is tokenized in context. Options of several pieces
("golden retriever", "sea-green"), the empty negative option and a fixed negative prompt ending in punctuation are
covered; pooled CLIP vectors are compared too.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from dpo_diff.backends.base import load_backend
from dpo_diff.relax import PromptTooLongError, WordMixture, negative_template, positive_template
from dpo_diff.relax_gaps import corner_gaps
from dpo_diff.space import SearchSpace, space_from_substitutes

BASE = space_from_substitutes(
    "a Red dog, on green grass",
    {"dog": ["golden retriever", "cat"], "grass": ["sand"]},
    {"red": ["blue", "light blue"], "green": ["sea-green"], "grass": ["water"]},
)
SPACE = SearchSpace(BASE.prompt, BASE.slots, "blurry.")


def _corners(space, side):
    slots = space.slots_of(side)
    for choice in itertools.product(*(range(space.slots[i].size) for i in slots)):
        c = list(space.default)
        for i, o in zip(slots, choice):
            c[i] = o
        yield tuple(c)


def test_t5_template_layout(tiny_flux):
    t5 = load_backend(tiny_flux).text_views()[1]
    tok = t5.tokenizer
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (None, 0, 1)
    for side, build in (("positive", positive_template), ("negative", negative_template)):
        template = build(SPACE, tok, t5.max_length)
        for c in _corners(SPACE, side):
            pair = SPACE.render(c)
            text = pair.prompt if side == "positive" else pair.negative_prompt
            assert template.corner_ids(c) == t5.tokenize([text])[0].tolist(), (side, text)
    retriever = tok("golden retriever", add_special_tokens=False).input_ids
    assert len(retriever) >= 3  # a multi-piece option ("▁golden", "▁retriev", "er")


@pytest.mark.parametrize("whitespace_split", [True, False])
def test_corner_ids_with_either_t5_pre_tokenizer(whitespace_split):
    """With or without splitting at whitespace before Metaspace (a trailing space of a fixed piece would otherwise
    become its own "▁" token), every corner of both sides lays out as its rendered text's tokens."""
    from dpo_diff.testing_flow import tiny_t5_tokenizer

    tok = tiny_t5_tokenizer(whitespace_split=whitespace_split)
    assert tok("a ", add_special_tokens=False).input_ids != tok("a", add_special_tokens=False).input_ids or \
        whitespace_split
    odd = SearchSpace("a  Red dog,on green grass!", BASE.slots, "blurry.")  # double space, glued comma, "!"
    for space in (SPACE, odd):
        for side, build in (("positive", positive_template), ("negative", negative_template)):
            template = build(space, tok, 64)
            for c in _corners(space, side):
                pair = space.render(c)
                text = pair.prompt if side == "positive" else pair.negative_prompt
                want = tok([text], padding="max_length", max_length=64).input_ids[0]
                assert template.corner_ids(c) == want, (side, text)


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_every_corner_encodes_as_its_text_through_every_encoder(which, request):
    """cond, pooled, uncond and uncond_pooled of the relaxed conditioning at every one-hot corner equal the exact
    encoding of the rendered prompt pair (bit-for-bit on these tiny models)."""
    backend = load_backend(request.getfixturevalue(which))
    encode = backend.relaxed_conditioning(SPACE, guidance_scale=4.0)
    mix = WordMixture(SPACE.sizes)
    corners = sorted(set(_corners(SPACE, "positive")) | set(_corners(SPACE, "negative")))
    with torch.no_grad():
        for c in corners:
            pair = SPACE.render(c)
            got = encode(mix.one_hot(c))
            want = (*backend.encode_text([pair.prompt]), *backend.encode_text([pair.negative_prompt]))
            for x, y in zip((got.cond, got.pooled, got.uncond, got.uncond_pooled), want):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=lambda m: f"{pair}: {m}")


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_batched_mixtures_are_independent_rows(which, request):
    """Weights ``[B, S, O]`` (several Gumbel samples in one pass) give row b equal to the conditioning of weights[b],
    the pooled vectors included."""
    backend = load_backend(request.getfixturevalue(which))
    encode = backend.relaxed_conditioning(SPACE, guidance_scale=4.0)
    mix, gen = WordMixture(SPACE.sizes), torch.Generator().manual_seed(0)
    weights = torch.stack([mix.sample_weights(1.0, gen) for _ in range(3)])
    with torch.no_grad():
        batched = encode(weights)
        for b in range(3):
            row = encode(weights[b])
            for name in ("cond", "pooled", "uncond", "uncond_pooled"):
                torch.testing.assert_close(getattr(batched, name)[b], getattr(row, name)[0], atol=1e-5, rtol=1e-5)


def test_corner_gaps_per_encoder_and_what_the_context_fixes(tiny_sd3, monkeypatch):
    import dpo_diff.relax as relax

    backend = load_backend(tiny_sd3)
    gaps = corner_gaps(SPACE, backend)
    assert [(g.encoder, g.side) for g in gaps] == [(e, s) for e in ("CLIP-L", "CLIP-G", "T5")
                                                   for s in ("positive", "negative")]
    assert all(g.max_abs == 0 and g.token_mismatches == 0 and g.corners == g.total for g in gaps)
    # Tokenized alone, ", on green grass" would start with "▁,": every positive corner differs (measured 6/6).
    monkeypatch.setattr(relax, "_marks_word_starts", lambda tokenizer: False)
    t5 = [g for g in corner_gaps(SPACE, backend) if g.encoder == "T5" and g.side == "positive"][0]
    assert t5.token_mismatches == t5.corners == 6 and t5.max_abs > 0.1


def test_t5_takes_prompts_longer_than_clip(tiny_flux):
    from dpo_diff.backends.flux import FluxBackend

    backend = FluxBackend.from_pretrained(tiny_flux, max_sequence_length=120)
    long_prompt = " ".join(["a red dog on green grass"] * 16)  # 81 CLIP tokens, 97 T5 tokens with </s>
    assert backend.text_views()[0].count_tokens(long_prompt) > 77
    backend.check_prompt(long_prompt)  # CLIP truncates as the pipeline does; T5 sees it all
    images = backend.generate([long_prompt], [""], [0], steps=2, guidance_scale=1.0)
    assert images.shape == (1, 3, 16, 16)
    with pytest.raises(PromptTooLongError, match="T5 takes 120"):
        backend.check_prompt(long_prompt + " and" * 30)
    with pytest.raises(ValueError, match="max_sequence_length must be in"):
        FluxBackend.from_pretrained(tiny_flux, max_sequence_length=1024)


def test_space_show_prints_the_gap_per_encoder(tiny_flux, tmp_path, capsys):
    from dpo_diff.cli import main
    from dpo_diff.space import save_spaces

    path = tmp_path / "spaces.json"
    save_spaces([SPACE], path)
    assert main(["space", "show", str(path), "--model", tiny_flux]) == 0
    out = capsys.readouterr().out
    for part in ("CLIP positive 0 (", "CLIP negative 0 (", "T5 positive 0 (", "T5 negative 0 (", "12/12 corners"):
        assert part in out, out
