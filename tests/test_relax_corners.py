"""The relaxation equals the text at its corners: every one-hot candidate encodes as its rendered prompt.

Both sides, options of different token lengths, the empty negative option, a fixed negative prompt ending in
punctuation (its last token merges with the following comma), the SD 1.x pad token (EOS) and the SD 2.x one ("!"),
on the tiny test model and on the shipped shapes-world generator.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from dpo_diff.relax import WordMixture, encode_mixed, negative_template, positive_template
from dpo_diff.relax_gaps import corner_gaps
from dpo_diff.space import SearchSpace, Slot, space_from_substitutes

SPACE = space_from_substitutes(
    "a Red dog on green grass",
    {"dog": ["golden retriever", "cat"], "grass": ["sand"]},
    {"red": ["blue", "light blue"], "green": ["sea-green"], "grass": ["water"]},
)


def _sides(space):
    yield "positive", positive_template, lambda pair: pair.prompt
    yield "negative", negative_template, lambda pair: pair.negative_prompt


def _all_corners(space, side):
    slots = space.slots_of(side)
    for choice in itertools.product(*(range(space.slots[i].size) for i in slots)):
        c = list(space.default)
        for i, o in zip(slots, choice):
            c[i] = o
        yield tuple(c)


def _assert_every_corner_is_its_text(backend, space):
    mix = WordMixture(space.sizes)
    for side, build, text_of in _sides(space):
        template = build(space, backend.tokenizer, backend.max_length)
        corners = list(_all_corners(space, side))
        texts = [text_of(space.render(c)) for c in corners]
        ids = backend.tokenize(texts)
        ref = backend.encode_ids(ids)
        for c, text, row_ids, row in zip(corners, texts, ids, ref):
            assert template.corner_ids(c) == row_ids.tolist(), (side, c, text)
            with torch.no_grad():
                ours = encode_mixed(backend, template, mix.one_hot(c))
            torch.testing.assert_close(ours[0], row, atol=1e-5, rtol=1e-5, msg=lambda m: f"{side} {text!r}: {m}")


@pytest.mark.parametrize("negative_prompt", ["", "blurry, low quality", "blurry."])
def test_every_corner_of_both_sides_encodes_as_its_rendered_text(backend, negative_prompt):
    space = SearchSpace(SPACE.prompt, SPACE.slots, negative_prompt)
    _assert_every_corner_is_its_text(backend, space)


def test_pad_token_bang_sd2_tokenizer(backend):
    # SD 2.x tokenizers pad with "!" (id 0), not with EOS: padding after the (moving) EOS must follow suit.
    from transformers import CLIPTokenizer

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.resources import clip_tokenizer_path

    tok = CLIPTokenizer.from_pretrained(str(clip_tokenizer_path()), pad_token="!")
    assert tok.pad_token_id == 0 and tok.pad_token_id != tok.eos_token_id
    sd2 = StableDiffusionBackend(tok, backend.text_encoder, backend.unet, backend.vae, backend.new_scheduler())
    assert sd2.tokenize(["red"])[0, -1] == 0
    _assert_every_corner_is_its_text(sd2, SearchSpace(SPACE.prompt, SPACE.slots, "blurry"))


def test_shapes_world_generator_corners():
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.world import generator_path
    from dpo_diff.world.spaces import world_space

    world = StableDiffusionBackend.from_pretrained(str(generator_path()))
    _assert_every_corner_is_its_text(world, world_space("a green orb", "improve"))  # negative: 2 x 6 x 4
    gaps = corner_gaps(world_space("a big purple circle in the center", "attack"), world, max_corners=24)
    assert [(g.side, g.corners, g.token_mismatches, g.max_abs) for g in gaps] == [("positive", 24, 0, 0.0)]
    assert gaps[0].total > 24 and gaps[0].scale > 1


def test_corner_gaps_reports_what_the_layout_cannot_match(backend):
    gaps = corner_gaps(SPACE, backend)
    assert [(g.side, g.corners, g.total, g.max_abs) for g in gaps] == [("positive", 6, 6, 0.0),
                                                                      ("negative", 12, 12, 0.0)]
    # what the layout cannot match is measured, not hidden: an option ending in punctuation merges with the
    # prompt's own "!" ("cat.!" is one token pair ".!", not "." + "!")
    odd = SearchSpace("a dog!", (Slot("positive", "dog", ("dog", "cat."), 1),))
    (gap,) = corner_gaps(odd, backend)
    assert (gap.side, gap.corners, gap.token_mismatches) == ("positive", 2, 1) and gap.max_abs > 1e-3


def test_soft_weights_are_distributions_over_tokens_and_batch_rows_agree(backend):
    space = SearchSpace(SPACE.prompt, SPACE.slots, "blurry.")
    mix = WordMixture(space.sizes)
    gen = torch.Generator().manual_seed(0)
    w = torch.stack([mix.sample_weights(1.0, gen) for _ in range(3)])
    for build in (positive_template, negative_template):
        template = build(space, backend.tokenizer)
        vocab, probs = template.token_probs(w)
        assert probs.shape == (3, 77 - template.mix_start, len(vocab))
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 77 - template.mix_start))
        torch.testing.assert_close(template.token_probs(w[1])[1], probs[1])
        table = backend.token_embedding.weight
        torch.testing.assert_close(template.mix(w, table)[2], template.mix(w[2], table))


def test_relaxed_corner_gradient_reaches_every_option(backend):
    mix = WordMixture(SPACE.sizes)
    w = mix.probs()
    cond = encode_mixed(backend, positive_template(SPACE, backend.tokenizer), w)
    uncond = encode_mixed(backend, negative_template(SPACE, backend.tokenizer), w)
    (cond.pow(2).sum() + uncond.pow(2).sum()).backward()
    for i, size in enumerate(SPACE.sizes):
        assert (mix.logits.grad[i, :size] != 0).all(), f"slot {i}"


def test_old_layout_gap_is_gone_for_empty_options(backend):
    # Before: the empty option became pad tokens inside the slot and commas were fixed between slots.
    space = space_from_substitutes("a red dog", antonyms={"red": ["blue"], "dog": ["cat"]})
    template = negative_template(space, backend.tokenizer)
    assert template.corner_ids((0, 1)) == backend.tokenize(["cat"])[0].tolist()
    assert template.corner_ids((0, 0)) == backend.tokenize([""])[0].tolist()


def test_space_show_prints_the_gap_with_a_model(tiny_sd, tmp_path, capsys):
    from dpo_diff.cli import main
    from dpo_diff.space import save_spaces

    path = tmp_path / "spaces.json"
    save_spaces([SearchSpace(SPACE.prompt, SPACE.slots, "blurry.")], path)
    assert main(["space", "show", str(path), "--model", tiny_sd]) == 0
    out = capsys.readouterr().out
    assert "relaxation gap" in out and "positive 0 (" in out and "negative 0 (" in out and "12/12 corners" in out
    assert main(["space", "show", str(path)]) == 0  # no model: no text encoder loaded, no gap
    assert "relaxation gap" not in capsys.readouterr().out
