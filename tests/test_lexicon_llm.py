"""The LLM lexicon against a real OpenAI-compatible HTTP server on 127.0.0.1 (no mocks of the client)."""

from __future__ import annotations

import json
import socket

import pytest

from dpo_diff.files import FileWarning
from dpo_diff.lexicons import LexiconError
from dpo_diff.lexicons.llm import LLMLexicon, parse_answer
from dpo_diff.space_builder import BuildError, build_spaces
from llm_server import serve

PROMPT = "A plane flies through the blue sky"
GOOD = ("plane -> aircraft, jet, airliner\nflies -> soars, glides, cruises\nblue -> azure, cobalt, navy\n"
        "sky -> heavens, air")
MESSY = """Sure! Here are the substitutes:

1. **Plane** -> "Aircraft", jet, Air liner, airliner.
2) flies → soars; glides, cruises (informal)
- blue: azure, COBALT, navy blue, "sapphire"
* sky => heavens, firmament, the wide open air
* dragon -> wyrm, drake
Note that these keep the meaning.
"""


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    with serve() as s:
        yield s


def lexicon(server, tmp_path, **kw) -> tuple[LLMLexicon, list[float]]:
    sleeps: list[float] = []
    kw.setdefault("cache_dir", tmp_path / "cache")
    lex = LLMLexicon("test-model", base_url=server.url, api_key_env="DPO_DIFF_TEST_KEY", sleep=sleeps.append,
                     backoff=0.01, timeout=5, **kw)
    return lex, sleeps


def test_parse_answer_tolerates_markup():
    parsed = parse_answer(MESSY)
    assert parsed["plane"] == ["aircraft", "jet", "air liner", "airliner"]  # multi-word answers go in Lexicon
    assert parsed["flies"] == ["soars", "glides", "cruises"]  # "(informal)" removed
    assert parsed["blue"] == ["azure", "COBALT", "navy blue", "sapphire"]
    assert set(parsed) == {"plane", "flies", "blue", "sky", "dragon"}  # the chatter around the lines is no word


def test_messy_answer_is_cleaned(server, tmp_path):
    server.default = ("text", MESSY)
    lex, _ = lexicon(server, tmp_path)
    subs = lex.substitutes(PROMPT, "synonym")
    assert subs == {
        "plane": ["aircraft", "jet", "airliner"],  # quotes, casing, multi-word "Air liner" dropped, duplicate gone
        "flies": ["soars", "glides", "cruises"],  # "(informal)" removed
        "blue": ["azure", "COBALT", "sapphire"],  # acronym-like capitals kept; "navy blue" dropped
        "sky": ["heavens", "firmament"],
    }  # "dragon" is not in the prompt
    body = server.requests[0]
    assert body["model"] == "test-model"
    text = body["messages"][0]["content"]
    assert PROMPT in text and "5" in text and "->" in text


def test_antonym_request_and_cache(server, tmp_path):
    server.default = ("text", "blue -> orange, yellow, red\nsky -> ground, earth, sea")
    lex, _ = lexicon(server, tmp_path)
    expected = {"blue": ["orange", "yellow", "red"], "sky": ["ground", "earth", "sea"]}
    assert lex.substitutes(PROMPT, "antonym") == expected
    assert "opposite" in server.requests[0]["messages"][0]["content"]
    # a new lexicon with the same cache folder answers without a single request
    again, _ = lexicon(server, tmp_path)
    assert again.substitutes(PROMPT, "antonym") == lex.substitutes(PROMPT, "antonym")
    assert len(server.requests) == 1 and again.requests_made == 0
    files = list((tmp_path / "cache").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["model"] == "test-model"


def test_rate_limit_is_retried(server, tmp_path):
    server.script = [("status", 429), ("status", 503)]
    server.default = ("text", GOOD)
    lex, sleeps = lexicon(server, tmp_path)
    assert lex.substitutes(PROMPT, "synonym")["flies"] == ["soars", "glides", "cruises"]
    assert len(server.requests) == 3 and len(sleeps) == 2
    assert sleeps[1] > sleeps[0]  # exponential backoff


def test_timeout_is_retried(server, tmp_path):
    server.script = [("sleep", 3.0, GOOD)]
    server.default = ("text", GOOD)
    lex, sleeps = lexicon(server, tmp_path, cache_dir=False)
    lex.timeout = 0.5
    assert lex.substitutes(PROMPT, "synonym")["plane"] == ["aircraft", "jet", "airliner"]
    assert len(server.requests) == 2 and len(sleeps) == 1


def test_malformed_and_unusable_answers_are_retried(server, tmp_path):
    server.script = [("raw", "<html>bad gateway</html>"), ("text", "Sorry, I cannot help with that."),
                     ("text", "dragon -> wyrm, drake\nthe -> a"),  # no word of the prompt (or only a stop word)
                     ("text", "plane -> plane, Plane\nsky -> etc., a, b")]  # nothing usable left after cleaning
    server.default = ("text", GOOD)
    lex, sleeps = lexicon(server, tmp_path)
    assert lex.substitutes(PROMPT, "synonym")["sky"] == ["heavens", "air"]
    assert len(server.requests) == 5 and len(sleeps) == 4


def test_garbage_after_all_attempts_names_the_endpoint(server, tmp_path):
    server.default = ("text", "I am a teapot.")
    lex, _ = lexicon(server, tmp_path, max_attempts=3)
    with pytest.raises(LexiconError) as e:
        lex.substitutes(PROMPT, "synonym")
    msg = str(e.value)
    assert server.url in msg and "after 3 attempts" in msg and "--llm-model" in msg and "teapot" in msg
    assert "no 'word -> substitutes' line or JSON object" in msg  # the reason, not just "unusable"
    assert len(server.requests) == 3
    assert not list((tmp_path / "cache").glob("*.json"))  # bad answers are never cached


def test_auth_error_fails_at_once(server, tmp_path):
    server.default = ("status", 401)
    lex, sleeps = lexicon(server, tmp_path)
    with pytest.raises(LexiconError, match="DPO_DIFF_TEST_KEY"):
        lex.substitutes(PROMPT, "synonym")
    assert len(server.requests) == 1 and not sleeps


def test_unreachable_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    lex = LLMLexicon("m", base_url=url, cache_dir=False, max_attempts=2, sleep=lambda s: None, timeout=2)
    with pytest.raises(LexiconError) as e:
        lex.substitutes(PROMPT, "antonym")
    assert url in str(e.value) and "is running" in str(e.value)


def test_build_keeps_partial_results_when_the_llm_fails(server, tmp_path):
    prompts = ["a red car", "a blue sky", "a green tree"]
    server.script = [("text", "red -> green, blue, white"), ("text", "blue -> orange, yellow, red")]
    server.default = ("text", "garbage")
    lex, _ = lexicon(server, tmp_path, max_attempts=2)
    out = tmp_path / "spaces.json"
    with pytest.raises(BuildError, match="2 finished spaces are saved") as e:
        build_spaces(prompts, "antonym", lex, out=out)
    assert server.url in str(e.value)
    data = json.loads(out.read_text())
    assert [s["prompt"] for s in data["spaces"]] == prompts[:2]
    # rerun after the server recovers: only the third prompt is requested (the others are done and cached)
    server.default = ("text", "green -> red, brown, purple\ntree -> stump, bush")
    n = len(server.requests)
    report = build_spaces(prompts, "antonym", lex, out=out)
    assert report.reused == prompts[:2] and report.built == prompts[2:]
    assert len(server.requests) == n + 1


JSON_ANSWER = '{"red": ["crimson", "scarlet"], "car": ["automobile", "vehicle"], "road": ["street", "highway"]}'
CAR = "a red car on the road"
CAR_SUBS = {"red": ["crimson", "scarlet"], "car": ["automobile", "vehicle"], "road": ["street", "highway"]}


@pytest.mark.parametrize("answer", [
    JSON_ANSWER,
    f"Here you go:\n```json\n{JSON_ANSWER}\n```\nHope this helps!",
    "```\n" + json.dumps(CAR_SUBS, indent=2) + "\n```",
    json.dumps({"synonyms": CAR_SUBS}),
    json.dumps([{"word": k, "synonyms": v} for k, v in CAR_SUBS.items()]),
    json.dumps({k: ", ".join(v) for k, v in CAR_SUBS.items()}),
    "red: crimson, scarlet, car: automobile, vehicle; road: street, highway",
])
def test_json_and_one_line_answers_keep_each_word_its_own_substitutes(server, tmp_path, answer):
    server.default = ("text", answer)
    lex, _ = lexicon(server, tmp_path)
    assert lex.substitutes(CAR, "synonym") == CAR_SUBS
    assert len(server.requests) == 1


def test_fillers_quotes_and_markup_never_become_substitutes(server, tmp_path):
    server.default = ("text", 'car -> automobile, vehicle, etc.\nred -> "crimson", \'scarlet\', a,b\n'
                              "road -> <script>alert(1)</script>street, <b>highway</b>, e.g., ...")
    lex, _ = lexicon(server, tmp_path)
    assert lex.substitutes(CAR, "synonym") == {"red": ["crimson", "scarlet"], "car": ["automobile", "vehicle"],
                                               "road": ["street", "highway"]}


def test_cut_off_json_keeps_the_complete_pairs(server, tmp_path):
    server.default = ("text", JSON_ANSWER[:JSON_ANSWER.index("vehicle") + 3])  # cut inside the "car" list
    lex, _ = lexicon(server, tmp_path)
    with pytest.warns(FileWarning) as caught:
        # the complete items before the cut, each under its own word; the words after it are named in a warning
        assert lex.substitutes(CAR, "synonym") == {"red": ["crimson", "scarlet"], "car": ["automobile"]}
    (record,) = caught
    assert "'on', 'road'" in str(record.message)


def test_partial_answer_is_kept_with_a_warning_naming_the_missing_words(server, tmp_path):
    server.default = ("text", "plane -> jet\nflies -> soars")  # one substitute each, for half the words
    lex, sleeps = lexicon(server, tmp_path)
    with pytest.warns(FileWarning) as caught:
        assert lex.substitutes(PROMPT, "synonym") == {"plane": ["jet"], "flies": ["soars"]}
    assert len(server.requests) == 1 and not sleeps
    (record,) = caught
    msg = str(record.message)
    assert "'blue', 'sky'" in msg and PROMPT in msg and server.url in msg


def test_corrupt_cache_file_is_discarded_with_a_warning_and_asked_again(server, tmp_path):
    server.default = ("text", GOOD)
    lex, _ = lexicon(server, tmp_path)
    first = lex.substitutes(PROMPT, "synonym")
    (cache,) = (tmp_path / "cache").glob("*.json")
    for corrupt in (cache.read_text()[:100], "", '{"answer": 5}', '["x"]', '{"answer": "I am a teapot."}'):
        cache.write_text(corrupt)
        again, _ = lexicon(server, tmp_path)
        n = len(server.requests)
        with pytest.warns(FileWarning) as caught:
            assert again.substitutes(PROMPT, "synonym") == first
        assert len(server.requests) == n + 1  # asked again
        (message,) = [str(w.message) for w in caught if "cache" in str(w.message)]
        assert str(cache) in message and "corrupt" in message
        assert json.loads(cache.read_text())["answer"] == GOOD  # the new answer replaced the corrupt file
