"""``dpo-diff space build|show`` in-process via ``dpo_diff.cli.main``."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from dpo_diff.cli import main  # noqa: E402
from dpo_diff.space import load_spaces  # noqa: E402
from llm_server import serve  # noqa: E402


@pytest.mark.parametrize("argv", [["space", "--help"], ["space", "build", "--help"], ["space", "show", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


def test_build_and_show(tmp_path, capsys):
    out = tmp_path / "spaces.json"
    assert main(["space", "build", "--prompt", "a red car on a wet street", "--kind", "antonym", "--with-nplib",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "options are single tokens" in text and "1 built, 0 reused" in text
    space = load_spaces(out)["a red car on a wet street"]
    assert {"red", "wet", "on"} <= {s.word for s in space.slots} and len(space.slots_of("negative")) >= 7
    assert main(["space", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "negative red" in shown and "green green</w>" in shown and "(nplib)" in shown
    # a rerun reuses the finished prompt
    assert main(["space", "build", "--prompt", "a red car on a wet street", "--kind", "antonym", "--with-nplib",
                 "--out", str(out)]) == 0
    assert "0 built, 1 reused" in capsys.readouterr().out


def test_prompt_file_synonym_without_constraint(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a big dog\nthe of and\n")
    out = tmp_path / "s.json"
    assert main(["space", "build", "--prompts", str(prompts), "--kind", "synonym", "--similarity-threshold", "0",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no substitutable words in 'the of and'" in err
    spaces = load_spaces(out)
    assert spaces["the of and"].slots == () and spaces["a big dog"].slots_of("positive")


def test_llm_lexicon_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with serve() as server:
        server.default = ("text", "red -> green, blue, white\ncar -> bike, boat")
        out = tmp_path / "s.json"
        rc = main(["space", "build", "--prompt", "a red car", "--kind", "antonym", "--lexicon", "llm",
                   "--llm-base-url", server.url, "--llm-model", "m", "--llm-cache", str(tmp_path / "c"),
                   "--out", str(out)])
        assert rc == 0
        assert {s.word: s.options for s in load_spaces(out)["a red car"].slots} == {
            "red": ("", "green", "blue", "white"), "car": ("", "bike", "boat")}
        server.default = ("text", "nonsense")
        rc = main(["space", "build", "--prompt", "a blue sky", "--kind", "antonym", "--lexicon", "llm",
                   "--llm-base-url", server.url, "--llm-model", "m", "--llm-attempts", "1", "--out", str(out)])
        assert rc == 2
        err = capsys.readouterr().err
        assert server.url in err and "1 finished spaces are saved" in err


@pytest.mark.parametrize("extra,match", [
    (["--lexicon", "thesaurus"], "unknown lexicon 'thesaurus'"),
    (["--lexicon", "llm"], "needs --llm-model"),
    (["--lexicon", "file"], "needs --lexicon-file"),
    (["--similarity-threshold", "1.5"], "must be in [0, 1], got 1.5"),
    (["--overrides", "OVERRIDES"], "unknown keys"),
    (["--model", "MISSING"], "no CLIP tokenizer found"),
])
def test_bad_input(tmp_path, capsys, extra, match):
    bad = tmp_path / "ov.json"
    bad.write_text('{"synonyms": {}}')
    extra = [str(bad) if x == "OVERRIDES" else str(tmp_path / "nope") if x == "MISSING" else x for x in extra]
    rc = main(["space", "build", "--prompt", "a dog", "--out", str(tmp_path / "s.json"), *extra])
    assert rc == 2
    assert match in capsys.readouterr().err


def test_show_reference_layout(tmp_path, capsys):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"a cat on a mat": {"opp": "cat -> dog, bird\nmat -> floor, table"}}))
    assert main(["space", "show", str(path), "--prompt", "a cat on a mat"]) == 0
    assert "negative cat: 3/3 single-token" in capsys.readouterr().out


def test_a_prompt_over_77_tokens_gets_a_warning(tmp_path, capsys):
    prompt = " ".join(["red"] * 80) + " dog"
    assert main(["space", "build", "--prompt", prompt, "--kind", "nplib", "--out", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err
    assert "has 83 tokens but the text encoder takes 77" in err and "will refuse it" in err


def test_keep_going_when_every_prompt_fails_writes_nothing_and_fails(tmp_path, capsys):
    other = tmp_path / "other.json"
    assert main(["space", "build", "--prompt", "a cat", "--kind", "nplib", "--out", str(other)]) == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red dog\na big house\n")
    out = tmp_path / "s.json"
    capsys.readouterr()
    rc = main(["space", "build", "--prompts", str(prompts), "--lexicon", "file", "--lexicon-file", str(other),
               "--keep-going", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and not out.exists()
    assert "0 built, 0 reused, 2 failed; nothing written" in captured.out and "->" not in captured.out
