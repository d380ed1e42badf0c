import json

import pytest

from dpo_diff.cli import main
from dpo_diff.hard_prompts import EmptySelection, select

PROMPTS = ["a red dog on the grass", "a big happy cat", "a small black car near a tall tree"]


def test_select_keeps_prompts_beyond_the_threshold():
    scores = {"a": [0.8, 0.8], "b": [0.7, 0.7], "c": [0.95, 0.9], "d": [0.86, 0.9]}
    assert list(select(scores, "improve", 0.85).selected) == ["c", "d"]  # in file order
    assert select(scores, "improve", 0.85, max_prompts=1).selected == {"c": pytest.approx(0.925)}
    assert list(select(scores, "attack", 0.85).selected) == ["a", "b"]
    with pytest.raises(EmptySelection, match=r"no prompt has a loss above 0.99 \(improve\); the 4 losses range from "
                                             r"0.7000 to 0.9250"):
        select(scores, "improve", 0.99)


def run_select(tiny_sd, tiny_clip, prompts, out, *extra):
    return main(["select", "--prompts", prompts, "--model", tiny_sd, "--judge", tiny_clip, "--steps", "4",
                 "--seeds", "0,1", "--device", "cpu", "--out", str(out), *extra])


def test_select_cli_scores_resumes_and_explains_an_empty_selection(tiny_sd, tiny_clip, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "hard.json"
    assert run_select(tiny_sd, tiny_clip, str(prompts), out, "--threshold", "0") == 0
    kept = json.loads(out.read_text())
    assert list(kept) == PROMPTS  # every loss is above 0
    scores = [json.loads(line) for line in (tmp_path / "hard.json.scores.jsonl").read_text().splitlines()]
    assert scores[0]["settings"]["seeds"] == [0, 1] and len(scores) == 4
    assert all(len(s["losses"]) == 2 for s in scores[1:])
    first = capsys.readouterr().out
    assert "[3/3]" in first
    # A second selection from the same scores generates nothing and keeps the prompts below a threshold (attack).
    median = sorted(kept.values())[1]
    assert run_select(tiny_sd, tiny_clip, str(prompts), out, "--task", "attack", "--threshold", str(median)) == 0
    assert "[1/3]" not in capsys.readouterr().out
    assert list(json.loads(out.read_text())) == [p for p, v in kept.items() if v < median]
    # The selected file is itself a prompt set.
    from dpo_diff.prompt_sets import read_prompt_set

    assert read_prompt_set(out).prompts == [p for p, v in kept.items() if v < median]
    assert run_select(tiny_sd, tiny_clip, str(prompts), out, "--threshold", "4.9") == 2
    err = capsys.readouterr().err
    assert "no prompt has a loss above 4.9" in err and "losses range from" in err


def test_select_bad_input(tiny_sd, tiny_clip, tmp_path, capsys):
    assert run_select(tiny_sd, tiny_clip, str(tmp_path / "missing.txt"), tmp_path / "o.json") == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["select", "--prompts", "x.txt", "--out", "o.json"]) == 2
    assert "give --model" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "-0.2"], "--threshold must be a judge loss between 0 and 4.935"),
    (["--threshold", "nan"], "--threshold must be"),
    (["--steps", "0"], "steps must be >= 2, got 0"),
    (["--out", "SAME"], "would overwrite the prompt file"),
])
def test_select_refuses_bad_numbers_and_overwriting_its_input(tmp_path, capsys, extra, message):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(PROMPTS))
    extra = [str(prompts) if x == "SAME" else x for x in extra]
    argv = ["select", "--prompts", str(prompts), "--model", "m", "--device", "cpu", "--out", str(tmp_path / "o.json")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert json.loads(prompts.read_text()) == PROMPTS


def test_a_bad_line_in_the_score_cache_costs_only_that_prompt(tiny_sd, tiny_clip, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "hard.json"
    assert run_select(tiny_sd, tiny_clip, str(prompts), out, "--threshold", "0") == 0
    cache = tmp_path / "hard.json.scores.jsonl"
    lines = cache.read_text().splitlines()
    lines[2] = lines[2][:10]  # the second prompt's score, cut
    cache.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert run_select(tiny_sd, tiny_clip, str(prompts), out, "--threshold", "0") == 0
    captured = capsys.readouterr()
    assert "line 3 (not valid JSON)" in captured.err
    assert "[2/3]" in captured.out and "[1/3]" not in captured.out and "[3/3]" not in captured.out
    assert cache.read_text().startswith("\n".join(lines) + "\n")  # appended to, never rewritten
