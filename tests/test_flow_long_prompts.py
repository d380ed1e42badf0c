"""SD 3 and FLUX with prompts over 77 CLIP tokens: CLIP sees the text cut as its tokenizer cuts it (BOS, the first 75
tokens, EOS), as the pipelines encode it, and GPO's relaxation lays out the same cut text; T5 sees the whole prompt.

LONG (CLIP BPE, without BOS/EOS): "cat" is token 74, the last CLIP keeps, and "golden retriever" (one token longer
than "dog", earlier in the prompt) pushes it past the cut; "grass" is past the cut at every corner. NEGATIVE is 72
tokens: its longest corner ("light blue", "yellow" appended) is cut too.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from dpo_diff.backends.base import load_backend
from dpo_diff.relax import WordMixture
from dpo_diff.relax_chunks import ChunkedTemplate, side_templates
from dpo_diff.relax_gaps import corner_gaps
from dpo_diff.space import SearchSpace, space_from_substitutes

FILLER = " ".join(["a big house with a small tree"] * 9)
LONG = f"a Red dog on {FILLER} by the sea, and a white cat on green grass under the blue sky"
NEGATIVE = " ".join(["blurry low quality photo"] * 18)
BASE = space_from_substitutes(LONG, {"dog": ["golden retriever", "fox"], "cat": ["puppy"], "grass": ["sand"]},
                              {"red": ["blue", "light blue"], "green": ["yellow"]})
SPACE = SearchSpace(BASE.prompt, BASE.slots, NEGATIVE)


def _corners(space):
    """Every corner of each side, the other side's slots at option 0."""
    out = set()
    for side in ("positive", "negative"):
        slots = space.slots_of(side)
        for choice in itertools.product(*(range(space.slots[i].size) for i in slots)):
            c = list(space.default)
            for i, o in zip(slots, choice):
                c[i] = o
            out.add(tuple(c))
    return sorted(out)


def _backend(which: str, request):
    """T5 at 128 tokens (LONG takes fewer): the relaxation's T5 layout runs over every position."""
    from dpo_diff.backends.flux import FluxBackend
    from dpo_diff.backends.sd3 import StableDiffusion3Backend

    cls = {"tiny_sd3": StableDiffusion3Backend, "tiny_flux": FluxBackend}[which]
    return cls.from_pretrained(request.getfixturevalue(which), max_sequence_length=128)


def _slot(word: str) -> int:
    return next(i for i, s in enumerate(SPACE.slots) if s.word.lower() == word and s.target == "positive")


def test_the_prompt_crosses_clips_cut(tiny_sd3):
    clip = load_backend(tiny_sd3).text_views()[0]
    content = clip.tokenizer(LONG, add_special_tokens=False).input_ids
    assert len(content) > 75 and clip.tokenizer.decode([content[74]]) == "cat"
    assert clip.count_tokens(NEGATIVE) - 2 == 72
    templates = side_templates(SPACE, clip)
    assert all(isinstance(t, ChunkedTemplate) and t.chunks == 1 for t in templates.values())
    # "grass" lies past the cut: CLIP's layout is the same whichever option it takes
    c = list(SPACE.default)
    c[_slot("grass")] = 1
    assert templates["positive"].corner_ids(c) == templates["positive"].corner_ids(SPACE.default)


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_long_prompt_corners_encode_as_their_cut_text(which, request):
    """The relaxed conditioning at every one-hot corner equals the exact encoding of the rendered pair (CLIP cut at
    77 tokens by its tokenizer, T5 whole); corner_gaps agrees; soft weights reach every slot's logits."""
    backend = _backend(which, request)
    backend.check_prompt(LONG)
    encode = backend.relaxed_conditioning(SPACE, guidance_scale=4.0)
    mix = WordMixture(SPACE.sizes)
    with torch.no_grad():
        for c in _corners(SPACE):
            pair = SPACE.render(c)
            got = encode(mix.one_hot(c))
            want = (*backend.encode_text([pair.prompt]), *backend.encode_text([pair.negative_prompt]))
            for x, y in zip((got.cond, got.pooled, got.uncond, got.uncond_pooled), want):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=lambda m: f"{pair}: {m}")
    gaps = corner_gaps(SPACE, backend, max_corners=4)
    assert len(gaps) == 2 * len(backend.text_views()), gaps
    assert all(g.token_mismatches == 0 and g.max_abs <= 1e-5 for g in gaps), gaps
    soft = encode(mix.sample_weights(1.0, torch.Generator().manual_seed(0)))
    (soft.cond.sum() + soft.pooled.sum() + soft.uncond.sum() + soft.uncond_pooled.sum()).backward()
    for i, n in enumerate(SPACE.sizes):
        assert (mix.logits.grad[i, :n] != 0).all(), SPACE.slots[i]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_long_prompt_relaxation_runs_on_cuda(tiny_sd3):
    """The cut CLIP layouts index with CPU tensors into the weights' device: a soft mixture on CUDA runs and its
    gradient reaches every slot."""
    from dpo_diff.backends.sd3 import StableDiffusion3Backend

    backend = StableDiffusion3Backend.from_pretrained(tiny_sd3, device="cuda", max_sequence_length=128)
    mix = WordMixture(SPACE.sizes).to("cuda")
    soft = backend.relaxed_conditioning(SPACE, guidance_scale=4.0)(
        mix.sample_weights(1.0, torch.Generator().manual_seed(0)))
    assert soft.cond.device.type == "cuda"
    (soft.cond.float().sum() + soft.pooled.float().sum() + soft.uncond.float().sum()).backward()
    for i, n in enumerate(SPACE.sizes):
        assert (mix.logits.grad[i, :n] != 0).all(), SPACE.slots[i]
