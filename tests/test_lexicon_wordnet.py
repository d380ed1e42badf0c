"""The offline WordNet lexicon: shipped data, part of speech, lemmatisation/re-inflection, curated antonyms."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_diff.lexicons import LexiconError, get_lexicon
from dpo_diff.lexicons.base import STOP_WORDS
from dpo_diff.lexicons.morphology import analyses, inflect
from dpo_diff.lexicons.wordnet import DEFAULT_PATH, WordNetLexicon
from dpo_diff.space import space_from_substitutes

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def wn() -> WordNetLexicon:
    return WordNetLexicon(max_options=None)


def test_shipped_file_is_compact_and_covers_common_words(wn):
    assert DEFAULT_PATH.stat().st_size < 4_000_000
    lemmas = wn.data["lemmas"]
    assert len(lemmas) > 50_000
    common = {
        "n": "dog cat car house tree man woman child city street water sky mountain road table book flower".split(),
        "v": "run walk sit stand eat fly jump look hold play drive swim sleep carry build".split(),
        "a": "big small happy sad old new beautiful dark bright fast slow hot cold wet dry".split(),
    }
    for pos, words in common.items():
        for w in words:
            count, syns, ants = lemmas[w][pos]
            assert syns, f"{w}/{pos} has no synonyms"
    for w, pos in [("big", "a"), ("happy", "a"), ("old", "a"), ("man", "n"), ("sit", "v"), ("quickly", "r")]:
        assert lemmas[w][pos][2], f"{w}/{pos} has no antonyms"


CASES = [
    # prompt, word, relation, expected substitutes (all must be present)
    ("a big dog", "big", "synonym", {"large", "huge"}),
    ("a big dog", "big", "antonym", {"small", "little"}),
    ("a happy child", "happy", "antonym", {"unhappy"}),
    ("a man and a woman", "man", "antonym", {"woman"}),
    ("an old car", "car", "synonym", {"automobile"}),
    ("a beautiful lake", "beautiful", "synonym", {"lovely", "pretty"}),
    ("a plane flies through the air", "flies", "synonym", {"soars", "travels"}),
    ("two dogs playing", "dogs", "synonym", {"puppies"}),
    ("a cat sitting on a mat", "sitting", "synonym", {"perching", "squatting"}),
    ("a cat sitting on a mat", "sitting", "antonym", {"standing"}),
    ("the bigger houses", "bigger", "antonym", {"smaller"}),
    # curated classes WordNet lacks
    ("a red car", "red", "antonym", {"green", "blue"}),
    ("a wooden table", "wooden", "antonym", {"metal", "plastic"}),
    ("two dogs playing", "two", "antonym", {"one", "three"}),
    ("a cup on the table", "on", "antonym", {"under"}),
    ("a tiny mouse", "tiny", "antonym", {"huge", "giant"}),
    ("a house on the left", "left", "antonym", {"right"}),
]


@pytest.mark.parametrize("prompt,word,relation,expected", CASES)
def test_fixed_words(wn, prompt, word, relation, expected):
    subs = wn.substitutes(prompt, relation)
    assert word in subs, f"{word!r} got no {relation}s in {prompt!r}: {subs}"
    assert expected <= set(subs[word]), f"{word!r}: {subs[word]} lacks {expected - set(subs[word])}"


def test_part_of_speech_from_context(wn):
    texts = "a plane flies through the air".split()
    assert (wn.tag(texts, 2).pos, wn.tag(texts, 2).lemma, wn.tag(texts, 2).form) == ("v", "fly", "3sg")
    texts = "a fly on the wall".split()
    assert wn.tag(texts, 1).pos == "n"
    # the noun reading of "fly" (the insect) must not get verb substitutes
    noun = set(wn.substitutes("a fly on the wall", "synonym").get("fly", []))
    verb = set(wn.substitutes("birds fly over the sea", "synonym").get("fly", []))
    assert "soar" in verb and "soar" not in noun
    assert wn.tag("they are building a house".split(), 2).pos == "v"
    assert wn.tag("a tall building".split(), 2).pos == "n"


def test_reinflection_keeps_the_form(wn):
    flies = wn.substitutes("a plane flies through the air", "synonym")["flies"]
    assert all(o.endswith("s") for o in flies), flies
    dogs = wn.substitutes("two dogs playing", "synonym")["dogs"]
    assert all(o.endswith("s") for o in dogs), dogs
    sitting = wn.substitutes("a cat sitting on a mat", "synonym")["sitting"]
    assert all(o.endswith("ing") for o in sitting), sitting


def test_never_the_original_word_nor_stop_words(wn):
    prompts = ["a plane flies through the air with fumes coming out the back", "Two dogs are running on the grass",
               "A red stop sign sitting in the middle of a street.", "The geese flew over the bigger houses"]
    for prompt in prompts:
        for rel in ("synonym", "antonym"):
            for word, opts in wn.substitutes(prompt, rel).items():
                assert word.lower() not in STOP_WORDS
                assert word.lower() not in [o.lower() for o in opts]
                assert len(opts) == len({o.lower() for o in opts})
                assert all(" " not in o for o in opts)


def test_case_kept_and_rendered(wn):
    subs = wn.substitutes("Dogs run", "synonym")
    assert "Dogs" in subs
    space = space_from_substitutes("Dogs run", subs)
    rendered = space.render([1] + [0] * (len(space.slots) - 1)).prompt
    assert rendered[0].isupper() and rendered.split()[0].lower() == subs["Dogs"][0]


def test_max_options_truncates():
    assert len(WordNetLexicon(max_options=2).substitutes("a big dog", "synonym")["big"]) == 2


def test_non_english_and_emoji_do_not_crash(wn):
    assert wn.substitutes("東京の夜 🌃", "synonym") == {}
    assert wn.substitutes("🐶🐱", "antonym") == {}
    assert "city" in wn.substitutes("東京 🌃 neon city", "synonym")


def test_morphology():
    assert inflect("soar", "v", "3sg", {}) == "soars"
    assert inflect("hound", "n", "plural", {}) == "hounds"
    assert inflect("stop", "v", "ing", {}) == "stopping"
    assert inflect("glide", "v", "ing", {}) == "gliding"
    assert inflect("carry", "v", "past", {}) == "carried"
    assert inflect("happy", "a", "comparative", {}) == "happier"
    assert inflect("beautiful", "a", "comparative", {}) is None  # would need "more": not one word
    irregular = {"n": {"goose": ["geese"]}, "v": {"go": ["gone", "went"]}}
    assert inflect("goose", "n", "plural", irregular) == "geese"
    assert inflect("go", "v", "past", irregular) == "went"
    exists = {("n", "fly"), ("v", "fly"), ("n", "glass"), ("n", "glasses")}
    readings = analyses("flies", lambda p, w: (p, w) in exists, {})
    assert {(a.pos, a.lemma, a.form) for a in readings} == {("n", "fly", "plural"), ("v", "fly", "3sg")}


def test_missing_file_names_the_build_script(tmp_path):
    with pytest.raises(LexiconError, match="build_wordnet_lexicon.py"):
        WordNetLexicon(tmp_path / "nope.json.gz").substitutes("a big dog", "synonym")


def test_unknown_lexicon_name():
    with pytest.raises(LexiconError, match="unknown lexicon 'thesaurus'.*wordnet, llm, file"):
        get_lexicon("thesaurus")


def test_import_stays_cheap():
    code = ("import sys, dpo_diff, dpo_diff.lexicons, dpo_diff.lexicons.wordnet, dpo_diff.space_builder; "
            "bad = [m for m in ('nltk', 'openai', 'torch', 'sentence_transformers', 'transformers') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


WORDNET_DICT = Path("/usr/share/wordnet")


@pytest.mark.skipif(not (WORDNET_DICT / "data.noun").is_file(), reason="Debian wordnet-base not installed")
def test_build_script_reads_the_debian_database(tmp_path):
    pytest.importorskip("nltk")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import build_wordnet_lexicon as script
    finally:
        sys.path.pop(0)
    reader = script.open_wordnet(WORDNET_DICT, tmp_path)
    assert "large" in script.rank_synonyms(reader, "big", "a")
    assert "small" in script.rank_antonyms(reader, "large", "a")
    assert "small" in script.rank_antonyms(reader, "huge", "a")  # indirect, through the satellite's head
    exc = script.read_exceptions(WORDNET_DICT)
    assert exc["n"]["geese"] == ["goose"]
