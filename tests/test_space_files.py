"""Space files are validated by a schema: every malformed file gets one line naming the place, never a traceback;
the reference layout is read as the reference implementation means it (keywords are no filter, inflected keys
match by lemma, phrases work or are reported, one bad key never refuses the whole file)."""

from __future__ import annotations

import json
import warnings

import pytest

from dpo_diff.files import FileWarning
from dpo_diff.space import SearchSpace, SpaceError, load_space, load_spaces, same_lemma, save_spaces

GOOD_SLOT = {"target": "positive", "word": "red", "options": ["red", "crimson"], "position": 1}


def space_file(*slots, prompt="a red car"):
    return {"format": "dpo-diff/space-v1", "spaces": [{"prompt": prompt, "slots": list(slots)}]}


def slot(**changes):
    return {**GOOD_SLOT, **changes}


@pytest.mark.parametrize("data, message", [
    (space_file(slot(options=["red", 5])), "spaces[0].slots[0].options[1]: expected a string, got 5"),
    (space_file(slot(options=["red", None])), "spaces[0].slots[0].options[1]: expected a string, got null"),
    (space_file(GOOD_SLOT, slot(position="1")), 'spaces[0].slots[1].position: expected an integer, got "1"'),
    (space_file(slot(position=1.5)), "spaces[0].slots[0].position: expected an integer, got 1.5"),
    (space_file(slot(position=-1)), "spaces[0].slots[0].position: expected a number >= 0, got -1"),
    (space_file(GOOD_SLOT, None), "spaces[0].slots[1]: expected an object, got null"),
    (space_file(slot(target="middle")), "spaces[0].slots[0].target: expected 'positive' or 'negative', got "
                                        '"middle"'),
    (space_file(slot(colour="x")), "spaces[0].slots[0]: unknown key \"colour\"; allowed: target, word, options"),
    (space_file(slot(options=[])), "spaces[0].slots[0].options: expected at least 1 item(s), got []"),
    ({"spaces": [{"prompt": "a red car", "slots": "red"}]}, 'spaces[0].slots: expected a list, got "red"'),
    ({"prompt": "a red car", "slots": "red"}, 'slots: expected a list, got "red"'),
    ({"spaces": "abc"}, 'spaces: expected a list, got "abc"'),
    ({"spaces": [None]}, "spaces[0]: expected an object, got null"),
    ({"spaces": [{"slots": []}]}, 'spaces[0]: missing required key "prompt"'),
    ({"spaces": [{"prompt": 3, "slots": []}]}, "spaces[0].prompt: expected a string, got 3"),
    ({"format": "v9", "spaces": []}, "format: expected 'dpo-diff/space-v1', got \"v9\""),
    ([{"prompt": "a red car", "slots": [None]}], "[0].slots[0]: expected an object, got null"),
    (space_file(slot(position=0)), "spaces[0]: slot word 'red' is not the prompt's word at position 0"),
    (space_file(slot(options=["crimson"])), "spaces[0].slots[0]: positive slot for word 'red': options[0] must"),
    ("abc", 'expected an object or a list of search spaces, got "abc"'),
    ({"a red car": 5}, '["a red car"]: expected an object, got 5'),
    ({"a red car": {"synonym": 5}}, "[\"a red car\"].synonym: expected 'word -> a, b' text or a {word: [options]}"),
    ({"a red car": {"synonym": {"red": [1]}}}, '["a red car"].synonym.red[0]: expected a string, got 1'),
    ({"a red car": {"keywords": "red"}}, '["a red car"].keywords: expected a list, got "red"'),
    ({"a red car": {"synonyms": {}}}, '["a red car"]: unknown key "synonyms"; allowed: synonym, sub, antonym'),
])
def test_malformed_space_files_get_one_line_naming_the_place(tmp_path, data, message):
    path = tmp_path / "spaces.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SpaceError) as e:
        load_spaces(path)
    text = str(e.value)
    assert text.startswith(f"search-space file {str(path)!r}: ") and message in text and "\n" not in text
    assert e.value.__cause__ is None  # no chained pydantic traceback


def test_many_problems_are_counted_not_listed(tmp_path):
    path = tmp_path / "spaces.json"
    path.write_text(json.dumps(space_file(slot(options=[1, 2, 3]))))
    with pytest.raises(SpaceError, match=r"options\[0\]: expected a string, got 1 \(and 2 more problems\)$"):
        load_spaces(path)


def test_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "spaces.json"
    path.write_bytes(b'{"a \xff": {}}')
    with pytest.raises(SpaceError, match="spaces.json' is not UTF-8"):
        load_spaces(path)


def test_from_dict_validates_too():
    with pytest.raises(SpaceError, match='search space: slots: expected a list, got "red"'):
        SearchSpace.from_dict({"prompt": "a red car", "slots": "red"})
    s = SearchSpace.from_dict({"prompt": "a red car", "slots": [GOOD_SLOT]})
    assert SearchSpace.from_dict(s.to_dict()) == s


def test_our_files_round_trip_with_meta(tmp_path):
    s = SearchSpace.from_dict({"prompt": "a red car", "slots": [GOOD_SLOT], "negative_prompt": "blurry",
                               "meta": {"lexicon": {"name": "x"}}})
    path = tmp_path / "s.json"
    save_spaces([s], path)
    assert load_space(path) == s and load_space(path).meta == {"lexicon": {"name": "x"}}


# ------------------------------------------------------------------ reference layout
SYNONYMS_7 = {"plane": ["jet"], "flies": ["soars"], "through": ["across"], "air": ["sky"], "with": ["having"],
              "fumes": ["smoke"], "back": ["rear"]}
PROMPT = "a plane flies through the air with fumes coming out the back"


def write(tmp_path, data):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(data))
    return path


def test_keywords_never_filter_reference_slots(tmp_path):
    path = write(tmp_path, {PROMPT: {"synonym": SYNONYMS_7, "keywords": ["plane", "fumes"]}})
    space = load_space(path, PROMPT)
    assert len(space.slots) == 7 and space.meta["keywords"] == ["plane", "fumes"]


def test_inflected_key_matches_by_lemma(tmp_path):
    path = write(tmp_path, {"a bird flies over running dogs": {
        "synonym": {"fly": ["soars", "glides"], "run": ["sprinting"], "dog": ["hounds"]},
        "antonym": "fly -> lands, sinks\nbird -> fish"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key matched: no warning at all
        space = load_space(path)
    pos = {s.word: s.options for s in space.slots if s.target == "positive"}
    neg = {s.word: s.options for s in space.slots if s.target == "negative"}
    assert pos == {"flies": ("flies", "soars", "glides"), "running": ("running", "sprinting"),
                   "dogs": ("dogs", "hounds")}
    assert neg == {"bird": ("", "fish"), "flies": ("", "lands", "sinks")}


def test_unmatched_key_skips_that_key_only_with_a_warning(tmp_path):
    path = write(tmp_path, {
        "two men walk": {"synonym": {"man": ["guys"], "walk": ["stroll"]}},  # irregular plural: no lemma match
        "a red car": {"antonym": {"red": ["green"]}},
        "a blue sky": {"synonym": {"ocean": ["sea"]}},  # nothing usable at all
    })
    with pytest.warns(FileWarning) as caught:
        spaces = load_spaces(path)
    assert [s.word for s in spaces["two men walk"].slots] == ["walk"]
    assert [s.options for s in spaces["a red car"].slots] == [("", "green")]
    assert spaces["a blue sky"].slots == () and "no usable substitutes" in spaces["a blue sky"].meta["warning"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "'two men walk'" in messages[0] and "'man' (not a word of the prompt" in messages[0]
    assert str(path) in messages[0] and "'ocean'" in messages[1]


def test_multi_word_keys_work_for_antonyms_and_are_reported_for_synonyms(tmp_path):
    path = write(tmp_path, {PROMPT: {"synonym": {**SYNONYMS_7, "coming out": ["emanating"]},
                                     "antonym": {"coming out": ["going in"], "air": ["water"]}}})
    with pytest.warns(FileWarning) as caught:
        space = load_space(path)
    assert len(space.select("positive").slots) == 7
    neg = [(s.word, s.options, s.position) for s in space.select("negative").slots]
    assert neg == [("air", ("", "water"), 5), ("coming out", ("", "going in"), 8)]
    assert space.render([0] * 7 + [1, 1]).negative_prompt == "water, going in"
    (record,) = caught
    assert "'coming out' (several words" in str(record.message)


def test_same_lemma():
    for a, b in [("fly", "flies"), ("run", "running"), ("bake", "baked"), ("stop", "stopped"), ("big", "bigger"),
                 ("lie", "lying"), ("glass", "glasses"), ("Car", "cars")]:
        assert same_lemma(a, b) and same_lemma(b, a), (a, b)
    for a, b in [("man", "men"), ("red", "bed"), ("glass", "glas"), ("a", "as")]:
        assert not same_lemma(a, b), (a, b)
