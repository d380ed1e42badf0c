"""The LLM-proposer search (--method llm) against a scripted local chat-completions server: the budget is the
Evaluator's, the model sees the task, the space and the scored history, odd answers are repaired or re-asked (never
silently dropped), transport errors are retried, answers are cached, and optimize runs it from the CLI."""

from __future__ import annotations

import json

import pytest

from dpo_diff.lexicons import LexiconError
from dpo_diff.search.api import search
from dpo_diff.search.base import Evaluator
from dpo_diff.search.llm_search import LLMSearchConfig, llm_search, parse_proposals, read_candidate
from dpo_diff.testing import SyntheticProblem, synthetic_space
from llm_server import serve


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)  # the scripted server is on 127.0.0.1
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with serve() as s:
        yield s


def config(server, tmp_path, **kw) -> LLMSearchConfig:
    kw.setdefault("cache_dir", str(tmp_path / "llm_cache"))
    return LLMSearchConfig(model="test-model", base_url=server.url, per_round=2, reasks=1, **kw)


def answer(*candidates) -> tuple[str, str]:
    return ("text", json.dumps({"candidates": [list(c) for c in candidates]}))


def user_texts(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


def test_proposals_are_scored_within_the_budget_and_the_model_sees_the_history(server, tmp_path):
    problem = SyntheticProblem(synthetic_space(3, 3), seed=1)
    server.script = [answer((1, 0, 0), (0, 2, 0)), answer((1, 2, 0), (2, 2, 1))]
    result = search(problem, method="llm", budget=5, seeds=(0,), llm=config(server, tmp_path))
    assert result.cost == 5 and len(result.evaluations) == 5
    assert [e.source for e in result.evaluations] == ["llm-user", "llm", "llm", "llm", "llm"]
    assert [e.candidate for e in result.evaluations][1:] == [(1, 0, 0), (0, 2, 0), (1, 2, 0), (2, 2, 1)]
    system = server.requests[0]["messages"][0]["content"]
    assert 'User prompt: "w0 w1 w2"' in system and "Task (improve)" in system
    assert 'slot 2, the word "w1": 0 "w1", 1 "w1x1", 2 "w1x2"' in system
    first, second = user_texts(server.requests[0])[0], user_texts(server.requests[1])[0]
    assert "[0, 0, 0] score" in first and "(the user's prompt)" in first and "[1, 0, 0]" not in first
    user_score = next(e.objective for e in result.evaluations if e.candidate == (0, 0, 0))
    assert "[1, 0, 0] score" in second and f"{user_score:.4f}" in second  # round 2 sees round 1's scores
    rounds = result.extra["llm"]["rounds"]
    assert [r["new"] for r in rounds] == [2, 2] and all(r["filled"] == 0 for r in rounds)


def test_odd_answers_are_repaired_or_reasked_and_every_refusal_is_recorded(server, tmp_path):
    problem = SyntheticProblem(synthetic_space(3, 3), seed=1)
    messy = ("Sure! Here are my picks:\n```json\n" + json.dumps({"candidates": [
        ["w0x1", "0", 0],  # option text and a digit string: repaired
        [0, 0],  # two choices for three slots
        [0, 7, 0],  # out of range
        [0, 0, 0],  # the user's prompt: already scored
        "w0x2 w1 w2",  # a prompt, not choices
    ]}) + "\n```\nHope this helps.")
    server.script = [("text", messy), answer((2, 1, 1)), answer((1, 1, 1), (2, 2, 2))]
    result = search(problem, method="llm", budget=5, seeds=(0,), llm=config(server, tmp_path))
    first = result.extra["llm"]["rounds"][0]
    assert first["answers"] == 2 and first["proposals"] == 6 and first["new"] == 2 and first["repeated"] == 1
    assert [i["reason"] for i in first["invalid"]] == [
        "2 choices for 3 slots", "slot 2: option 7 is out of range 0-2", "not a list of option numbers but a str"]
    assert first["repaired"] == [{"answer": 0, "proposal": '["w0x1", "0", 0]', "as": [1, 0, 0],
                                  "how": "slot 1: read the option text 'w0x1' as 1; slot 2: read '0' as 0"}]
    reask = server.requests[1]["messages"]
    assert [m["role"] for m in reask] == ["system", "user", "assistant", "user"] and reask[2]["content"] == messy
    assert "2 choices for 3 slots" in reask[3]["content"] and "[0, 0, 0] was already scored" in reask[3]["content"]
    assert "Propose 1 more new candidates" in reask[3]["content"]
    assert [e.candidate for e in result.evaluations][1:3] == [(1, 0, 0), (2, 1, 1)]


def test_an_answer_without_candidates_is_reasked_then_the_round_is_filled_at_random(server, tmp_path):
    problem = SyntheticProblem(synthetic_space(3, 3), seed=1)
    server.default = ("text", "I would try a more vivid word for w1.")
    result = search(problem, method="llm", budget=5, seeds=(0,), llm=config(server, tmp_path), seed=3)
    rounds = result.extra["llm"]["rounds"]
    assert rounds[0]["answers"] == 2 and rounds[0]["new"] == 0 and rounds[0]["filled"] == 2
    assert "no candidate was given" not in user_texts(server.requests[1])[1]
    assert "holds no JSON list of candidates" in user_texts(server.requests[1])[1]
    assert [e.source for e in result.evaluations] == ["llm-user"] + ["llm-fill"] * 4
    assert result.cost == 5 and len({e.candidate for e in result.evaluations}) == 5


def test_transport_errors_are_retried_and_a_dead_endpoint_fails_naming_it(server, tmp_path):
    problem = SyntheticProblem(synthetic_space(3, 3), seed=1)
    server.script = [("status", 500), ("status", 429), answer((1, 1, 1), (2, 2, 2))]
    sleeps: list[float] = []
    ev = Evaluator(problem, (0,), 3)
    result = llm_search(problem, ev, config(server, tmp_path), sleep=sleeps.append)
    assert len(sleeps) == 2 and [e.candidate for e in result.evaluations] == [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    server.script, server.default = [], ("status", 503)
    with pytest.raises(LexiconError, match=r"gave no usable candidate proposals after 2 attempts; last problem: "
                                           r"HTTP 503.*--llm-base-url"):
        llm_search(problem, Evaluator(problem, (0,), 3), config(server, tmp_path, max_attempts=2, cache_dir=""),
                   sleep=sleeps.append)


def test_a_rerun_with_the_same_scores_asks_nothing(server, tmp_path):
    server.script = [answer((1, 0, 0), (0, 2, 0)), answer((1, 2, 0), (2, 2, 1))]
    runs = [search(SyntheticProblem(synthetic_space(3, 3), seed=1), method="llm", budget=5, seeds=(0,),
                   llm=config(server, tmp_path)) for _ in range(2)]
    assert len(server.requests) == 2 and runs[1].extra["llm"]["requests"] == 0
    assert [e.candidate for e in runs[0].evaluations] == [e.candidate for e in runs[1].evaluations]


def test_reading_candidates_refuses_what_is_ambiguous():
    space = synthetic_space(2, 3, target="negative")
    assert read_candidate([0, "none"], space) == ((0, 0), "slot 2: read the option text 'none' as 0")
    assert read_candidate({"choices": ["W0X2", 1]}, space) == ((2, 1), "slot 1: read the option text 'W0X2' as 2")
    assert read_candidate([1.0, 2], space) == ((1, 2), "")
    assert read_candidate([0.5, 1], space) == (None, "slot 1: 0.5 is not an option number 0-2")
    assert read_candidate([True, 1], space)[0] is None
    assert read_candidate(["w1x1", 0], space) == (None, "slot 1: 'w1x1' is neither an option number 0-2 nor one "
                                                        "of the slot's options")
    assert parse_proposals("[0, 1]") == ([[0, 1]], None)  # one bare candidate
    assert parse_proposals('{"candidates": [[0, 1], [1, 2]') == ([[0, 1], [1, 2]], None)  # cut off
    assert parse_proposals('{"candidates": []}') == ([], "the answer's candidate list is empty")


def test_the_llm_method_needs_a_model_and_valid_settings(tmp_path):
    from dpo_diff.optimize import OptimizeConfig

    problem = SyntheticProblem(synthetic_space(3, 3), seed=1)
    with pytest.raises(ValueError, match="the llm search needs a chat model: --llm-model NAME"):
        search(problem, method="llm", budget=5, seeds=(0,))
    with pytest.raises(ValueError, match="method llm needs a chat model"):
        OptimizeConfig(prompt="a dog", space="s.json", model="m", method="llm")
    with pytest.raises(ValueError, match="per_round must be >= 1, got 0"):
        LLMSearchConfig(model="m", per_round=0)
    cfg = OptimizeConfig(prompt="a dog", space="s.json", model="m", method="llm", llm={"model": "m", "reasks": 0})
    assert cfg.llm == LLMSearchConfig(model="m", reasks=0) and cfg.to_dict()["llm"]["model"] == "m"


def test_optimize_runs_the_llm_search_from_the_cli(server, tiny_sd, tiny_clip, space_file, tmp_path, monkeypatch):
    from dpo_diff.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the answer cache's default folder
    server.default = answer((1, 2), (2, 1))  # the negative slots of "red" and "grass" (--target negative)
    out = tmp_path / "run"
    assert main(["optimize", "--prompt", "a red dog on the grass", "--space", space_file, "--model", tiny_sd,
                 "--judge", tiny_clip, "--steps", "3", "--budget", "4", "--seeds", "0", "--report-seeds", "5",
                 "--out", str(out), "--quiet", "--device", "cpu", "--rerank-top", "0", "--method", "llm",
                 "--target", "negative",
                 "--llm-model", "test-model", "--llm-base-url", server.url, "--llm-per-round", "2"]) == 0
    search_record = json.loads((out / "search.json").read_text())
    assert search_record["method"] == "llm" and search_record["cost"] <= 4
    assert [e["source"] for e in search_record["evaluations"]][:2] == ["llm-user", "llm"]
    assert json.loads((out / "config.json").read_text())["config"]["llm"]["base_url"] == server.url
    assert "a red dog on the grass" in server.requests[0]["messages"][0]["content"]
    assert list((tmp_path / "xdg" / "dpo-diff" / "llm").glob("*.json"))


def test_bench_compares_the_llm_search_with_random_at_one_budget(server, tiny_sd, tiny_clip, tmp_path, monkeypatch,
                                                                 capsys):
    from dpo_diff.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    server.default = answer((1, 2), (2, 1), (1, 1))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red dog on the grass\n")
    out = tmp_path / "bench"
    args = ["bench", "--prompts", str(prompts), "--model", tiny_sd, "--judge", tiny_clip, "--methods", "random,llm",
            "--steps", "3", "--guidance", "7.5", "--budget", "4", "--seeds", "0", "--report-seeds", "5",
            "--device", "cpu", "--rerank-top", "0", "--out", str(out)]
    assert main(args) != 0  # without an endpoint: refused before anything runs, saying what to give
    assert "method llm needs a chat model: --llm-model" in capsys.readouterr().err
    assert main([*args, "--llm-model", "test-model", "--llm-base-url", server.url, "--llm-per-round", "2"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["llm", "random"]
    assert all(r["cost"] <= 4 + 1e-9 for r in records) and server.requests
