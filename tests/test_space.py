import json

import pytest

from dpo_diff.space import (
    PromptPair,
    SearchSpace,
    Slot,
    SpaceError,
    load_space,
    load_spaces,
    prompt_words,
    save_spaces,
    space_from_substitutes,
)


def make_space() -> SearchSpace:
    return space_from_substitutes(
        "A red Dog flies over the dog-house, dog.",
        synonyms={"dog": ["hound", "puppy"], "flies": ["soars"]},
        antonyms={"red": ["blue", "green"], "flies": ["lands"]},
    )


def test_render_replaces_whole_words_keeps_case_and_punctuation():
    s = make_space()
    # "dog" occurs as a word twice (the "dog-house" token is one word, never substring-replaced)
    words = [w.text for w in prompt_words(s.prompt)]
    assert words == ["A", "red", "Dog", "flies", "over", "the", "dog-house", "dog"]
    assert [sl.word for sl in s.slots if sl.target == "positive"] == ["Dog", "flies", "dog"]
    assert s.render(s.default) == PromptPair("A red Dog flies over the dog-house, dog.", "")
    pair = s.render((1, 1, 2, 2, 1))
    assert pair.prompt == "A red Hound soars over the dog-house, puppy."
    assert pair.negative_prompt == "green, lands"


def test_negative_terms_drop_empty_choices_cleanly():
    s = make_space()
    assert s.render((0, 0, 0, 0, 1)).negative_prompt == "lands"
    assert s.render((0, 0, 0, 1, 0)).negative_prompt == "blue"
    base = SearchSpace(s.prompt, s.slots, negative_prompt="blurry")
    assert base.render((0, 0, 0, 1, 1)).negative_prompt == "blurry, blue, lands"
    assert base.render(base.default).negative_prompt == "blurry"


def test_json_round_trip(tmp_path):
    s = make_space()
    path = tmp_path / "spaces.json"
    save_spaces([s], path)
    loaded = load_spaces(path)
    assert loaded == {s.prompt: s}
    assert load_space(path, s.prompt.upper().lower()) == s  # case-insensitive lookup
    assert json.loads(path.read_text())["format"] == "dpo-diff/space-v1"


def test_reference_layout_text_and_map(tmp_path):
    # The reference implementation's per-prompt layout: raw LLM answers under sub/opp (or synonym/antonym).
    ref = {
        "a cat sitting on a red sofa": {
            "sub": "1. cat -> kitty, feline\n2. sitting -> resting, perching\n- sofa -> couch, settee",
            "opp": "red -> blue, green\nsofa -> floor",
            "keywords": ["cat", "sitting", "sofa", "red"],
        },
        "a happy dog": {"synonym": {"happy": ["joyful", "cheerful"]}, "antonym": {"happy": ["sad", "angry"]}},
    }
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    spaces = load_spaces(path)
    cat = spaces["a cat sitting on a red sofa"]
    assert [s.options for s in cat.slots if s.target == "positive"] == [
        ("cat", "kitty", "feline"), ("sitting", "resting", "perching"), ("sofa", "couch", "settee")]
    assert [s.options for s in cat.slots if s.target == "negative"] == [("", "blue", "green"), ("", "floor")]
    dog = spaces["a happy dog"]
    assert dog.render((2, 1)) == PromptPair("a cheerful dog", "sad")


def test_keywords_never_restrict_slots():
    # the reference implementation uses keywords for human evaluation only; they are kept, never a filter
    s = space_from_substitutes("a cat on a sofa", {"cat": ["kitty"], "sofa": ["couch"]}, keywords=["sofa"])
    assert [sl.word for sl in s.slots] == ["cat", "sofa"] and s.meta["keywords"] == ["sofa"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: space_from_substitutes("a cat", {"dog": ["hound"]}), "does not occur in the prompt"),
        (lambda: SearchSpace("   "), "prompt is empty"),
        (lambda: Slot("positive", "cat", ("cat", ""), 1), "empty options"),
        (lambda: Slot("negative", "cat", ("dog",), 1), "options\\[0\\] must be ''"),
        (lambda: Slot("positive", "cat", ("cat", "kitty", "kitty"), 1), "more than once"),
        (lambda: Slot("middle", "cat", ("cat",), 1), "not one of"),
        (lambda: SearchSpace("a cat", (Slot("positive", "dog", ("dog", "hound"), 1),)), "not the prompt's word"),
        (lambda: SearchSpace("a cat", (Slot("positive", "cat", ("cat", "x"), 5),)), "has 2 words"),
    ],
)
def test_bad_spaces_are_rejected_with_clear_messages(make, message):
    with pytest.raises(SpaceError, match=message):
        make()


def test_candidate_validation():
    s = make_space()
    with pytest.raises(SpaceError, match="outside"):
        s.render((0, 0, 0, 9, 0))
    with pytest.raises(SpaceError, match="5 slots"):
        s.render((0, 0))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dpo-diff space build"):
        load_spaces(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpaceError, match="not valid JSON"):
        load_spaces(bad)
    path = tmp_path / "s.json"
    save_spaces([make_space()], path)
    with pytest.raises(SpaceError, match="has no space for prompt"):
        load_space(path, "another prompt")


def test_trivial_space_and_sizes():
    s = make_space()
    assert s.sizes == (3, 2, 3, 3, 2) and s.num_candidates == 108 and not s.is_trivial
    assert SearchSpace("a cat").is_trivial
    assert s.select("negative").sizes == (3, 2)
