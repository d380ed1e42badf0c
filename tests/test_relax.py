import pytest
import torch

from dpo_diff.relax import PromptTooLongError, WordMixture, encode_mixed, negative_template, positive_template
from dpo_diff.space import SearchSpace, Slot, space_from_substitutes


def test_positive_template_matches_tokenizer_for_the_user_prompt(backend):
    s = space_from_substitutes("a red dog, running on grass!", {"dog": ["cat", "fox"], "grass": ["sand"]})
    tpl = positive_template(s, backend.tokenizer)
    assert tpl.input_ids.tolist() == backend.tokenize([s.prompt])[0].tolist()
    assert [st.slot for st in tpl.slots] == [0, 1]


@pytest.mark.parametrize("candidate", [(0, 0), (1, 0), (2, 1)])
def test_hard_one_hot_mixture_equals_encoding_of_rendered_text(backend, candidate):
    # single-token options: the relaxation with one-hot weights is exactly the rendered prompt
    s = space_from_substitutes("a red dog on grass", {"dog": ["cat", "fox"], "grass": ["sand"]})
    mix = WordMixture(s.sizes)
    w = mix.one_hot(candidate)
    ours = encode_mixed(backend, positive_template(s, backend.tokenizer), w)
    ref = backend.encode_text([s.render(candidate).prompt])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_negative_template_one_hot_equals_rendered_negative_prompt(backend):
    s = space_from_substitutes("a red dog on grass", antonyms={"red": ["blue"], "grass": ["sand"]})
    tpl = negative_template(s, backend.tokenizer)
    w = WordMixture(s.sizes).one_hot((1, 1))
    ref = backend.encode_text([s.render((1, 1)).negative_prompt])  # "blue, sand"
    torch.testing.assert_close(encode_mixed(backend, tpl, w), ref, atol=1e-5, rtol=1e-5)


def test_multi_token_options_are_kept_and_padded(backend):
    s = space_from_substitutes("a red dog", {"dog": ["golden retriever", "sea-lion", "cat"]})
    tpl = positive_template(s, backend.tokenizer)
    st = tpl.slots[0]
    assert st.option_ids.shape[0] == 4  # no option dropped
    assert st.lengths[0] == 1 and max(st.lengths) >= 2
    assert st.option_ids.shape[1] == max(st.lengths)
    # the sequence keeps exactly one EOS at the true end, so EOS pooling reads the right position
    ids = tpl.input_ids.tolist()
    assert ids.index(49407) == 1 + 2 + max(st.lengths)  # BOS + "a red" + slot width


def test_eos_pooling_uses_the_true_end(backend):
    s = space_from_substitutes("a red dog", {"dog": ["golden retriever"]})
    tpl = positive_template(s, backend.tokenizer)
    w = WordMixture(s.sizes).one_hot((1,))
    eos_pos = tpl.input_ids.tolist().index(49407)
    from dpo_diff.relax import mixture_hook

    with backend.text.hooked(mixture_hook(tpl, w)):
        out = backend.text_encoder(tpl.input_ids[None])
    torch.testing.assert_close(out.pooler_output[0], out.last_hidden_state[0, eos_pos])


def test_gradients_flow_through_the_text_encoder_to_every_slot(backend):
    s = space_from_substitutes("a red dog on grass", {"dog": ["cat", "fox"], "grass": ["sand"]},
                               {"red": ["blue"]})
    mix = WordMixture(s.sizes)
    w = mix.sample_weights(1.0, torch.Generator().manual_seed(0))
    cond = encode_mixed(backend, positive_template(s, backend.tokenizer), w)
    uncond = encode_mixed(backend, negative_template(s, backend.tokenizer), w)
    (cond.pow(2).sum() + uncond.pow(2).sum()).backward()
    g = mix.logits.grad
    for i, size in enumerate(s.sizes):
        assert g[i, :size].abs().sum() > 0, f"slot {i} got no gradient"


def test_template_over_77_tokens_is_refused(backend):
    prompt = " ".join(["word"] * 70) + " dog"
    s = space_from_substitutes(prompt, {"dog": ["a b c d e f g h i j"]})
    with pytest.raises(PromptTooLongError, match="77"):
        positive_template(s, backend.tokenizer)


def test_mixture_sampling_and_masking():
    mix = WordMixture((3, 1, 2))
    assert mix.argmax() == (0, 0, 0)
    p = mix.probs()
    assert p[1, 1:].sum() == 0 and p[2, 2] == 0
    gen = torch.Generator().manual_seed(0)
    w = mix.sample_weights(1.0, gen)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    cands = mix.sample_candidates(6, gen)
    assert cands[0] == (0, 0, 0) and len(set(cands)) == len(cands) == 6  # the whole space: 3*1*2
    assert all(c[1] == 0 and c[2] < 2 for c in cands)
    assert len(mix.sample_candidates(10, gen)) == 6  # cannot produce more distinct candidates than exist


def test_empty_negative_side_encodes_plain_prompt(backend):
    s = SearchSpace("a dog", (Slot("positive", "dog", ("dog", "cat"), 1),))
    tpl = negative_template(s, backend.tokenizer)
    torch.testing.assert_close(encode_mixed(backend, tpl, torch.zeros(1, 2)), backend.encode_text([""]))
