"""Building synonym/antonym/NPLib/hybrid spaces; overrides; resumable multi-prompt builds; reference layout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dpo_diff.lexicons import LexiconError, StaticLexicon
from dpo_diff.lexicons.file import FileLexicon
from dpo_diff.lexicons.nplib import load_nplib, nplib_slots
from dpo_diff.space import SpaceError, load_spaces
from dpo_diff.space_builder import BuildError, Overrides, build_space, build_spaces, load_overrides, read_prompts

LEX = StaticLexicon(synonyms={"dog": ["hound", "puppy"], "red": ["crimson"], "car": ["automobile"]},
                    antonyms={"red": ["green", "blue"], "big": ["small"], "dog": ["cat"]})


def test_kinds():
    syn = build_space("a big red dog", "synonym", LEX)
    assert [(s.target, s.word, s.options) for s in syn.slots] == [
        ("positive", "red", ("red", "crimson")), ("positive", "dog", ("dog", "hound", "puppy"))]
    ant = build_space("a big red dog", "antonym", LEX)
    assert [(s.target, s.word, s.options) for s in ant.slots] == [
        ("negative", "big", ("", "small")), ("negative", "red", ("", "green", "blue")),
        ("negative", "dog", ("", "cat"))]
    assert ant.render([0, 2, 1]).negative_prompt == "blue, cat"
    hyb = build_space("a big red dog", "hybrid", LEX)
    assert len(hyb.slots_of("positive")) == 2 and len(hyb.slots_of("negative")) == 3
    npl = build_space("a big red dog", "nplib")
    assert len(npl.slots) == 4 and all(s.options[0] == "" and s.source == "nplib" for s in npl.slots)
    assert sum(s.size - 1 for s in npl.slots) == len(load_nplib())
    both = build_space("a big red dog", "antonym", LEX, nplib=True)
    assert len(both.slots) == 3 + 4
    assert syn.meta["kind"] == "synonym" and syn.meta["lexicon"]["lexicon"] == "static"


def test_default_lexicon_is_offline_wordnet():
    space = build_space("a red car on the street", "antonym")
    assert space.meta["lexicon"]["lexicon"] == "wordnet"
    assert "green" in next(s for s in space.slots if s.word == "red").options


def test_nplib_list_is_ours_and_sized_as_the_paper():
    terms = load_nplib()
    assert 150 <= len(terms) <= 250 and len({t.lower() for t in terms}) == len(terms)
    assert {"blurry", "deformed", "low quality", "watermark"} <= set(terms)
    slots = nplib_slots(["a", "b", "c", "d", "e"], num_slots=2, forbidden=["C"])
    assert [s.options for s in slots] == [("", "a", "d"), ("", "b", "e")]
    with pytest.raises(ValueError, match="at least 1 slot"):
        nplib_slots(num_slots=0)


def test_no_substitutable_words_gives_an_empty_space_with_a_reason():
    for prompt in ("the of and", "🐶🐱 🌃", "東京の夜"):
        space = build_space(prompt, "hybrid")
        assert space.slots == () and space.is_trivial
        assert "no substitutable words" in space.meta["warning"] and "cannot be optimized" in space.meta["warning"]
    with pytest.raises(SpaceError, match="prompt is empty"):
        build_space("   ", "antonym", LEX)
    with pytest.raises(SpaceError, match="unknown space kind 'paraphrase'"):
        build_space("a dog", "paraphrase", LEX)  # type: ignore[arg-type]


def test_overrides(tmp_path):
    ov = Overrides.from_dict({"skip": ["car"], "synonym": {"add": {"dog": ["pooch"], "cat": ["kitty"]},
                                                            "forbid": {"dog": ["puppy"], "*": ["crimson"]}},
                              "antonym": {"add": {"car": ["bike"]}, "forbid": {"red": ["blue"]}},
                              "nplib": {"add": ["lens flare x"], "forbid": ["blurry"]}})
    syn = build_space("a red dog and a car", "synonym", LEX, overrides=ov)
    assert [(s.word, s.options) for s in syn.slots] == [("dog", ("dog", "pooch", "hound"))]  # red lost its only one
    ant = build_space("a red dog and a car", "antonym", LEX, overrides=ov, nplib=True)
    words = {s.word: s.options for s in ant.slots if s.word}
    assert words == {"red": ("", "green"), "dog": ("", "cat")}  # car is skipped even with an added antonym
    terms = {o for s in ant.slots if s.source == "nplib" for o in s.options}
    assert "lens flare x" in terms and "blurry" not in terms
    path = tmp_path / "ov.yaml"
    path.write_text("synonym:\n  add:\n    dog: [doggo]\n")
    assert build_space("a dog", "synonym", LEX, overrides=load_overrides(path)).slots[0].options[1] == "doggo"


@pytest.mark.parametrize("content,suffix,match", [
    ('{"synonyms": {}}', ".json", r"unknown keys \['synonyms'\]"),
    ('{"synonym": {"add": {"dog": "hound"}}}', ".json", "must be a list of strings"),
    ('{"synonym": {"remove": {}}}', ".json", "'add' and/or 'forbid'"),
    ('{"skip": "dog"}', ".json", "'skip' must be a list"),
    ("synonym: [unclosed", ".yaml", "cannot be parsed"),
    ("{not json", ".json", "cannot be parsed"),
    ("[1, 2]", ".json", "expected a mapping"),
])
def test_bad_overrides_files(tmp_path, content, suffix, match):
    path = tmp_path / f"ov{suffix}"
    path.write_text(content)
    with pytest.raises(SpaceError, match=match) as e:
        load_overrides(path)
    assert str(path) in str(e.value)


class FailingLexicon(StaticLexicon):
    """Answers ``limit`` prompts, then fails like an endpoint going away."""

    def __init__(self, limit: int, **kw):
        super().__init__(**kw)
        self.limit = limit
        self.prompts: list[str] = []

    def _propose(self, prompt, words, relation):
        if prompt not in self.prompts:
            self.prompts.append(prompt)
        if len(self.prompts) > self.limit:
            raise LexiconError("endpoint went away")
        return super()._propose(prompt, words, relation)


def _prompts(n: int) -> list[str]:
    return [f"a red dog number {i}" for i in range(n)]


def test_interrupted_build_resumes_without_redoing_finished_prompts(tmp_path):
    out = tmp_path / "spaces.json"
    prompts = _prompts(12)
    table = {"synonyms": {"dog": ["hound"]}, "antonyms": {"red": ["green"]}}
    first = FailingLexicon(5, **table)
    with pytest.raises(BuildError, match=r"prompt 6 of 12 .*5 finished spaces are saved.*rerun"):
        build_spaces(prompts, "hybrid", first, out=out)
    assert list(load_spaces(out)) == prompts[:5]
    second = FailingLexicon(100, **table)
    report = build_spaces(prompts, "hybrid", second, out=out)
    assert report.reused == prompts[:5] and report.built == prompts[5:]
    assert second.prompts == prompts[5:]  # finished prompts were not asked again
    assert list(load_spaces(out)) == prompts
    # changed settings: prompts are rebuilt, not silently reused
    third = FailingLexicon(100, **table)
    report = build_spaces(prompts[:3], "antonym", third, out=out)
    assert report.built == prompts[:3] and third.prompts == prompts[:3]
    assert load_spaces(out)[prompts[0]].meta["kind"] == "antonym" and len(load_spaces(out)) == 12


def test_keep_going_records_failures(tmp_path):
    report = build_spaces(_prompts(4), "antonym", FailingLexicon(2, antonyms={"red": ["green"]}),
                          out=tmp_path / "s.json", on_error="skip")
    assert len(report.built) == 2 and len(report.failed) == 2
    assert "endpoint went away" in next(iter(report.failed.values()))


SLOW_BUILD = textwrap.dedent("""
    import sys, time
    from dpo_diff.lexicons import StaticLexicon
    from dpo_diff.space_builder import build_spaces

    class Slow(StaticLexicon):
        def _propose(self, prompt, words, relation):
            time.sleep(0.05)
            return super()._propose(prompt, words, relation)

    prompts = [f"a red dog number {i}" for i in range(int(sys.argv[2]))]
    build_spaces(prompts, "antonym", Slow(antonyms={"red": ["green", "blue"]}), out=sys.argv[1], save_every_s=0,
                 progress=lambda i, n, p, s: print(s, p, flush=True))
""")


def test_killed_build_leaves_a_valid_file_and_resumes(tmp_path):
    out = tmp_path / "spaces.json"
    script = tmp_path / "slow_build.py"
    script.write_text(SLOW_BUILD)
    n = 500
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(n)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        done = 0
        deadline = time.time() + 60
        while done < 20 and time.time() < deadline:  # wait until some prompts are finished, then kill hard
            if proc.stdout.readline().startswith("built"):
                done += 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    saved = load_spaces(out)  # valid JSON despite SIGKILL: writes are atomic
    assert 20 <= len(saved) < n
    lex = FailingLexicon(10_000, antonyms={"red": ["green", "blue"]})
    report = build_spaces([f"a red dog number {i}" for i in range(n)], "antonym", lex, out=out)
    assert len(report.reused) == len(saved) and len(report.built) == n - len(saved)
    assert not set(lex.prompts) & set(saved)
    assert len(load_spaces(out)) == n


# The example entries of the reference README (antonym and synonym spaces for the same prompt), in its layout.
README_EXAMPLE = """{
  "a plane flies through the air with fumes coming out the back ": {
      "antonym": {
          "plane": [ "train", "car", "boat", "bike", "walk" ],
          "flies": [ "drops", "descends", "falls", "plummets", "sinks" ],
          "air": [ "water", "earth", "sand", "ground", "soil" ],
          "fumes": [ "oxygen", "fragrance", "scent" ],
          "back": [ "front", "top", "side", "fore", "ahead" ]
      },
      "synonym": {
          "plane": [ "aircraft", "jet", "airplane", "airliner", "airship" ],
          "flies": [ "glides", "soars", "travels", "cruises", "propels" ],
          "through": [ "across", "over", "in", "within", "amidst" ],
          "air": [ "sky", "atmosphere", "airspace", "firmament", "heavens" ],
          "with": [ "having", "containing", "possessing", "encompassing", "comprising" ],
          "fumes": [ "smoke", "exhaust", "emissions", "gases", "vapors" ],
          "coming out": [ "emanating", "releasing", "discharging", "expelling", "emanating" ],
          "back": [ "rear", "behind", "tail", "end", "aft" ]
      },
      "prompt_id": 3,
      "prompt": "a plane flies through the air with fumes coming out the back "
  }
}"""


def test_reference_readme_example_loads_and_replays(tmp_path):
    path = tmp_path / "reference.json"
    path.write_text(README_EXAMPLE)
    prompt = "a plane flies through the air with fumes coming out the back "
    space = load_spaces(path)[prompt]
    pos = {s.word: s.options for s in space.slots if s.target == "positive"}
    neg = {s.word: s.options for s in space.slots if s.target == "negative"}
    assert pos["flies"] == ("flies", "glides", "soars", "travels", "cruises", "propels")
    assert len(pos) == 7 and "coming out" not in pos  # a phrase is not a word slot
    assert neg["back"] == ("", "front", "top", "side", "fore", "ahead") and len(neg) == 5
    assert space.render([1] + [0] * (len(space.slots) - 1)).prompt.startswith("a aircraft flies")
    # the file lexicon replays it into our format (here: an antonym space plus NPLib)
    rebuilt = build_space(prompt, "antonym", FileLexicon(path), nplib=True)
    assert [s.word for s in rebuilt.slots if s.word] == ["plane", "flies", "air", "fumes", "back"]
    with pytest.raises(LexiconError, match="no entry for prompt"):
        FileLexicon(path).substitutes("another prompt", "synonym")


def test_read_prompts(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\na dog\n\na cat\na dog\n")
    assert read_prompts(txt) == ["a dog", "a cat"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"a dog": 0.86, "a cat": -1}))  # the reference's prompt files
    assert read_prompts(js) == ["a dog", "a cat"]
    js.write_text(json.dumps(["x"]))
    assert read_prompts(js) == ["x"]
    js.write_text("{}")
    with pytest.raises(SpaceError, match="holds no prompts"):
        read_prompts(js)
    with pytest.raises(FileNotFoundError):
        read_prompts(Path(tmp_path / "missing.txt"))
