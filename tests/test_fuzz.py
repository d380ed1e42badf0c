"""Property-based tests (Hypothesis): the space loader, the LLM answer parser and the prompt-set readers never give
a traceback on any input (only the documented error types) and never invent or misattribute a substitute."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpo_diff.lexicons.base import _OPTION_OK
from dpo_diff.lexicons.llm import FILLERS, parse_answer
from dpo_diff.prompt_sets import PromptSetError, read_prompt_set
from dpo_diff.space import SearchSpace, SpaceError, load_spaces

# Few examples keep the default suite fast; DPO_DIFF_FUZZ_EXAMPLES=5000 searches harder.
FUZZ = settings(max_examples=int(os.environ.get("DPO_DIFF_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ building blocks
json_leaf = st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=False) | st.text(max_size=12)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
word = st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=8).filter(
    lambda w: w not in FILLERS | {"none", "nothing", "word", "term", "key", "source", "token", "original",
                                  "substitutes", "synonyms", "antonyms", "opposites", "options", "alternatives",
                                  "words", "values", "and"})
PROMPT_WORDS = ["a", "red", "car", "flies", "over", "the", "road", "running"]
PROMPT = " ".join(PROMPT_WORDS)


_FOLDER = tempfile.TemporaryDirectory(prefix="dpo-diff-fuzz-")  # removed when the test session ends


def write(data: str | bytes, suffix: str = ".json") -> Path:
    path = Path(_FOLDER.name) / f"input{suffix}"
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


def load_or_error(path: Path) -> dict[str, SearchSpace] | None:
    try:
        return load_spaces(path)
    except SpaceError as e:
        assert "\n" not in str(e) and str(path) in str(e)  # one line naming the file
        return None


# ------------------------------------------------------------------ space loader
good_slot = st.fixed_dictionaries({"target": st.just("positive"), "word": st.just("red"),
                                   "options": st.just(["red", "crimson"]), "position": st.just(1)})
slot_like = st.one_of(good_slot, json_value, st.fixed_dictionaries(
    {"target": st.sampled_from(["positive", "negative", "middle", 1, None]), "word": json_leaf,
     "options": st.lists(json_leaf, max_size=3) | json_leaf},
    optional={"position": json_leaf, "source": json_leaf, "extra": json_leaf}))
space_like = st.fixed_dictionaries({"prompt": st.just(PROMPT) | json_leaf, "slots": st.lists(slot_like, max_size=3)
                                    | json_leaf}, optional={"negative_prompt": json_leaf, "meta": json_value})
space_file = st.one_of(
    json_value,
    st.fixed_dictionaries({"spaces": st.lists(space_like, max_size=2) | json_leaf},
                          optional={"format": st.just("dpo-diff/space-v1") | json_leaf}),
    space_like,
    st.lists(space_like, max_size=2),
)
reference_map = st.dictionaries(st.sampled_from(PROMPT_WORDS + ["fly", "run", "cars", "coming out", "men", ""])
                                | st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3)
                                | st.text(max_size=20) | json_leaf, max_size=5)
reference_file = st.dictionaries(st.just(PROMPT) | st.text(max_size=15), st.fixed_dictionaries(
    {}, optional={"synonym": reference_map | st.text(max_size=40) | json_leaf, "antonym": reference_map,
                  "opp": reference_map, "keywords": st.lists(st.text(max_size=5), max_size=2) | json_leaf,
                  "prompt_id": json_leaf, "bogus": json_leaf}) | json_leaf, max_size=3)


@FUZZ
@given(st.one_of(space_file, reference_file))
def test_space_loader_never_tracebacks(data):
    path = write(json.dumps(data))
    loaded = load_or_error(path)
    for space in (loaded or {}).values():
        words = [w.lower() for w in PROMPT_WORDS] if space.prompt == PROMPT else None
        for slot in space.slots:  # every option comes from the file, every positive slot sits on its word
            assert all(isinstance(o, str) for o in slot.options)
            if slot.target == "positive" and words is not None:
                assert words[slot.position] == slot.word.lower()


@FUZZ
@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_space_loader_survives_any_bytes(raw):
    load_or_error(write(raw))


# ------------------------------------------------------------------ LLM answer parser
ANSWER_ALPHABET = st.sampled_from(list("abcdefg xyz,;:|/-> \n\"'`{}[]()<>*#.1234") + ["->", "```", "etc", "json",
                                                                                    "<script>", "→", "é", "ß"])


def words_of(text: str) -> str:
    return text.casefold()


json_answer = st.dictionaries(st.text(max_size=8), json_value | st.lists(st.text(max_size=8), max_size=3),
                              max_size=4).map(lambda v: json.dumps(v, ensure_ascii=False))


@FUZZ
@given(st.lists(ANSWER_ALPHABET, max_size=60).map("".join) | st.text(max_size=80)
       | json_answer | json_answer.map(lambda t: f"```json\n{t}\n```"), st.floats(0.3, 1))
def test_parser_never_tracebacks_nor_invents_substitutes(text, fraction):
    text = text[: max(1, int(len(text) * fraction))]
    parsed = parse_answer(text)
    folded = words_of(text)
    for key, options in parsed.items():
        assert _OPTION_OK.match(key) and options
        for opt in options:
            assert _OPTION_OK.match(opt) and len(opt) >= 2 and opt.lower() not in FILLERS
            assert all(part.casefold() in folded for part in opt.split()), (opt, text)


mapping = st.dictionaries(word, st.lists(word, min_size=1, max_size=4, unique=True), min_size=1, max_size=5)


def render(subs: dict[str, list[str]], style: int) -> str:
    if style == 0:
        return "\n".join(f"{k} -> {', '.join(v)}" for k, v in subs.items())
    if style == 1:
        quoted = {k: ", ".join(f'"{o}"' for o in v) for k, v in subs.items()}
        return "Sure!\n" + "\n".join(f"{i}. **{k.title()}**: {q}, etc." for i, (k, q) in enumerate(quoted.items(), 1))
    if style == 2:
        return json.dumps(subs)
    if style == 3:
        return "Here:\n```json\n" + json.dumps(subs, indent=2) + "\n```\nDone."
    if style == 4:
        return json.dumps({"synonyms": [{"word": k, "synonyms": v} for k, v in subs.items()]})
    if style == 5:
        return "\n".join(f"- {k} => {'; '.join(v)}, a, <b>x</b>" for k, v in subs.items())
    return ", ".join(f"{k}: {', '.join(v)}" for k, v in subs.items())  # several pairs on one line


@FUZZ
@given(mapping, st.integers(0, 6))
def test_parser_gives_every_word_exactly_its_own_substitutes(subs, style):
    assert parse_answer(render(subs, style)) == subs


@FUZZ
@given(mapping, st.integers(0, 5), st.floats(0, 1))
def test_cut_off_answers_never_attach_a_substitute_to_another_word(subs, style, fraction):
    text = render(subs, style)
    parsed = parse_answer(text[: int(len(text) * fraction)])
    for key, options in parsed.items():
        assert key in subs
        for opt in options:  # a complete substitute of this word, or the cut-off start of one (or of its "etc")
            assert any(true.startswith(opt) for true in [*subs[key], "etc"]), (key, opt, subs)


# ------------------------------------------------------------------ prompt-set readers
prompt_file = st.one_of(
    st.text(max_size=60).map(lambda t: (t, ".txt")),
    st.text(max_size=60).map(lambda t: (t, ".csv")),
    st.text(max_size=60).map(lambda t: (t, ".tsv")),
    st.lists(json_value, max_size=4).map(lambda rows: ("\n".join(json.dumps(r) for r in rows), ".jsonl")),
    st.lists(st.text(max_size=3), max_size=4).map(lambda rows: ("\n".join(rows), ".jsonl")),
    json_value.map(lambda v: (json.dumps(v), ".json")),
    st.fixed_dictionaries({"annotations": json_value}, optional={"images": json_value}).map(
        lambda v: (json.dumps(v), ".json")),
    st.tuples(st.binary(max_size=40), st.sampled_from([".txt", ".json", ".jsonl", ".csv"])),
)


@FUZZ
@given(prompt_file)
def test_prompt_readers_never_traceback(item):
    content, suffix = item
    path = write(content, suffix)
    try:
        ps = read_prompt_set(path, max_tokens=None)
    except PromptSetError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert ps.prompts and all(isinstance(p, str) and p == " ".join(p.split()) for p in ps.prompts)
    assert len({p.casefold() for p in ps.prompts}) == len(ps.prompts)
    assert all(re.search(r"[^\W\d_]", p) for p in ps.prompts)
