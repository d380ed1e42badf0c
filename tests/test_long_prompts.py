"""Prompts over 77 CLIP tokens: 75-token chunks with BOS/EOS, concatenated (SD 1.x/2.x and SDXL), exact and relaxed.

Lengths (CLIP BPE, without BOS/EOS): FILLER is 60 tokens. ACROSS (79) has "dog" at token 71 and "grass" at 74, the
chunk's last: "golden retriever" (one token longer) pushes "grass" into the second chunk. SECOND (127) puts every
slot in the second chunk. STRADDLE (75) fits one chunk at its default corner and needs two at its longest (the
relaxation keeps two).
"""

from __future__ import annotations

import pytest
import torch

from dpo_diff.relax import WordMixture
from dpo_diff.relax_chunks import side_templates, template_chunks
from dpo_diff.relax_gaps import _side_corners, corner_gaps
from dpo_diff.space import SearchSpace, space_from_substitutes

FILLER = " ".join(["a big red house next to a small green tree"] * 6)
SUBS = ({"dog": ["golden retriever", "cat"], "grass": ["sand"]},
        {"red": ["blue", "light blue"], "green": ["sea-green"]})
ACROSS = f"{FILLER} on a very sunny hill by it, with a Red dog on green grass under a blue sky"
SECOND = f"{FILLER} {FILLER} and a Red dog on green grass"
STRADDLE = f"{FILLER} with a very sunny hill by the sea and a Red dog on green grass"


def space_for(prompt: str, negative: str = "") -> SearchSpace:
    base = space_from_substitutes(prompt, *SUBS)
    return SearchSpace(base.prompt, base.slots, negative)


def test_prompt_lengths(backend):
    n = {p: backend.count_tokens(p) - 2 for p in (ACROSS, SECOND, STRADDLE)}
    assert (n[ACROSS], n[SECOND], n[STRADDLE]) == (79, 127, 75)
    assert [template_chunks(side_templates(space_for(p), backend.text)["positive"]) for p in n] == [2, 2, 2]
    assert template_chunks(side_templates(space_for("a Red dog on green grass"), backend.text)["positive"]) == 1


def test_long_prompt_is_the_concatenated_chunk_encodings(backend):
    tok = backend.tokenizer
    content = tok(SECOND, add_special_tokens=False).input_ids
    chunks = [content[:75], content[75:]]
    ids = backend.text.tokenize([SECOND])
    assert ids.shape == (1, 2 * 77)
    expected = []
    for part in chunks:
        row = [tok.bos_token_id, *part, tok.eos_token_id]
        expected.append(torch.tensor([row + [tok.pad_token_id] * (77 - len(row))]))
    assert ids[0].tolist() == torch.cat(expected, 1)[0].tolist()
    with torch.no_grad():
        hidden = backend.encode_ids(ids)
        ref = torch.cat([backend.encode_ids(e) for e in expected], 1)
    torch.testing.assert_close(hidden, ref, atol=1e-6, rtol=0)
    # the negative prompt is padded with empty chunks (BOS, EOS, padding) to the prompt's count
    neg = backend.text.tokenize(["blurry"], 2)
    assert neg[0, 77:].tolist() == backend.tokenize([""])[0].tolist()
    # short prompts keep the plain 77-token layout
    assert backend.text.tokenize(["a red dog"]).tolist() == tok(["a red dog"], padding="max_length", max_length=77,
                                                               truncation=True, return_tensors="pt").input_ids.tolist()


def test_long_prompts_generate_and_rows_do_not_depend_on_each_other(backend):
    from dpo_diff.backends.base import Conditioning

    batch = backend.generate([SECOND, "a red dog"], ["blurry", ""], [0, 1], steps=3, guidance_scale=5.0)
    assert batch.shape == (2, 3, 16, 16) and torch.isfinite(batch).all()
    alone = backend.generate([SECOND], ["blurry"], [0], steps=3, guidance_scale=5.0)
    torch.testing.assert_close(batch[:1], alone, atol=1e-6, rtol=0)
    short = backend.generate(["a red dog"], [""], [1], steps=3, guidance_scale=5.0)
    torch.testing.assert_close(batch[1:], short, atol=1e-6, rtol=0)
    with torch.no_grad():
        text = Conditioning(backend.encode_ids(backend.text.tokenize([SECOND])),
                            backend.encode_ids(backend.text.tokenize(["blurry"], 2)))
    torch.testing.assert_close(alone, backend.sample(text, [0], steps=3, guidance_scale=5.0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="chunks"):
        backend.check_prompt(" ".join([FILLER] * 12))


@pytest.mark.parametrize("prompt", [ACROSS, SECOND, STRADDLE])
def test_corners_are_exact_across_chunk_boundaries(backend, prompt):
    gaps = corner_gaps(space_for(prompt, "blurry."), backend)
    assert [(g.side, g.corners == g.total, g.token_mismatches) for g in gaps] == [("positive", True, 0),
                                                                                   ("negative", True, 0)]
    assert max(g.max_abs for g in gaps) <= 1e-5, gaps


@pytest.mark.parametrize("prompt", [ACROSS, SECOND])
def test_sdxl_long_prompt_corners_tokens_and_pooled(tiny_sdxl, prompt):
    from dpo_diff.backends.sdxl import StableDiffusionXLBackend

    xl = StableDiffusionXLBackend.from_pretrained(tiny_sdxl)
    space = space_for(prompt)
    encode = xl.relaxed_conditioning(space, guidance_scale=5.0)
    mix = WordMixture(space.sizes)
    for side in ("positive", "negative"):
        for c in _side_corners(space, side, 1000, 0)[0]:
            pair = space.render(c)
            with torch.no_grad():
                got = encode(mix.one_hot(c))
                cond, pooled = xl.encode_prompts([pair.prompt], 2)
                uncond, uncond_pooled = xl.encode_negatives([pair.negative_prompt], 2)
            assert got.cond.shape[1] == got.uncond.shape[1] == 2 * 77
            for a, b in ((got.cond, cond), (got.pooled, pooled), (got.uncond, uncond),
                         (got.uncond_pooled, uncond_pooled)):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    images = xl.generate([prompt], ["blurry"], [0], steps=2, guidance_scale=5.0)
    assert images.shape == (1, 3, 16, 16)


def test_a_slot_in_the_second_chunk_gets_gradients(backend, judge):
    from dpo_diff.problem import Problem, SamplingConfig, Task

    space = space_for(SECOND)
    problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=3, guidance_scale=5.0))
    mix = WordMixture(space.sizes)
    problem.relaxation()(mix.sample_weights(1.0, torch.Generator().manual_seed(0)), (0,), start_step=1,
                         grad_steps=1).sum().backward()
    for i, n in enumerate(space.sizes):  # every slot sits past token 100, in the second chunk
        assert (mix.logits.grad[i, :n] != 0).all(), (space.slots[i], mix.logits.grad[i])


def _relaxed_vs_exact_prediction(backend, space, corner):
    """One guided denoiser call with the relaxed conditioning at ``corner`` and with the exact one (its own chunks)."""
    from dpo_diff.backends.base import Conditioning

    pair = space.render(corner)
    n = max(backend.text.chunk_count(pair.prompt), backend.text.chunk_count(pair.negative_prompt))
    with torch.no_grad():
        relaxed = backend.relaxed_conditioning(space, guidance_scale=5.0)(WordMixture(space.sizes).one_hot(corner))
        if hasattr(backend, "encode_prompts"):  # SDXL: pooled vectors too
            exact = Conditioning(*backend.encode_prompts([pair.prompt], n)[:1],
                                 *backend.encode_negatives([pair.negative_prompt], n)[:1],
                                 backend.encode_prompts([pair.prompt], n)[1],
                                 backend.encode_negatives([pair.negative_prompt], n)[1])
        else:
            exact = Conditioning(backend.encode_ids(backend.text.tokenize([pair.prompt], n)),
                                 backend.encode_ids(backend.text.tokenize([pair.negative_prompt], n)))
        sched = backend.new_scheduler(4)
        latents = backend.initial_latents([0], sched)
        t = sched.timesteps[1]
        return (backend.guided_prediction(sched, latents, t, relaxed, 5.0)[0],
                backend.guided_prediction(sched, latents, t, exact, 5.0)[0], relaxed, n)


def test_corners_with_fewer_chunks_mask_the_missing_ones(backend, tiny_sdxl):
    """STRADDLE's relaxation has two chunks; at its default corner (one chunk) the second is hidden from
    cross-attention, so the denoiser sees exactly the one-chunk prompt; at its longest corner both are visible.
    Between corners the second chunk is visible with the probability that the prompt needs it."""
    from dpo_diff.backends.sdxl import StableDiffusionXLBackend

    space = space_for(STRADDLE, "")
    longest = tuple(1 if s.target == "positive" and s.word == "dog" else 0 for s in space.slots)
    for model in (backend, StableDiffusionXLBackend.from_pretrained(tiny_sdxl)):
        for corner, chunks in ((space.default, 1), (longest, 2)):
            relaxed_out, exact_out, relaxed, n = _relaxed_vs_exact_prediction(model, space, corner)
            mask = relaxed.key_mask  # None: every chunk fully visible
            assert n == chunks and (mask is None if chunks == 2 else mask[0].tolist() == [1.0] * 77 + [0.0] * 77)
            torch.testing.assert_close(relaxed_out, exact_out, atol=1e-5, rtol=1e-5)
    soft = WordMixture(space.sizes).sample_weights(1.0, torch.Generator().manual_seed(0))
    mask = backend.relaxed_conditioning(space, guidance_scale=5.0)(soft).key_mask
    p_longest = float(soft[0, 1].detach())  # only "golden retriever" needs the second chunk
    torch.testing.assert_close(mask[0, 77:], torch.full((77,), p_longest))
