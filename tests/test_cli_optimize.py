import json
import os
import subprocess
import sys

import pytest

from conftest import CLI_PROMPT as PROMPT  # the prompt of the space_file fixture
from dpo_diff.cli import COMMANDS, main
from dpo_diff.space import save_spaces, space_from_substitutes


def run_optimize(space_file, tiny_sd, tiny_clip, out, *extra):
    return main(["optimize", "--prompt", PROMPT, "--space", space_file, "--model", tiny_sd, "--judge", tiny_clip,
                 "--steps", "6", "--budget", "6", "--gpo-iterations", "3", "--seeds", "0", "--report-seeds", "5,6",
                 "--out", str(out), "--quiet", "--device", "cpu", *extra])


@pytest.mark.parametrize("task", ["improve", "attack"])
def test_optimize_through_the_cli(space_file, tiny_sd, tiny_clip, tmp_path, task, capsys):
    out = tmp_path / "run"
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--task", task, "--method", "gpo") == 0
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["task"] == task and config["config"]["seeds"] == [0]
    assert "torch" in config["environment"]
    assert result["user_prompt"] == PROMPT
    assert set(result["before"]["report_losses"]) == {"5", "6"} and set(result["after"]["search_losses"]) == {"0"}
    assert 0 < result["cost"] <= 6
    best, searched = result["best"], {slot["target"] for slot in config["space"]["slots"]}
    if task == "improve":  # the file's antonym terms and, as in the default hybrid space, its synonym swaps
        assert searched == {"negative", "positive"}
    else:  # the synonym rewrites only
        assert searched == {"positive"} and best["negative_prompt"] == ""
    if result["note"] == "":  # the optimized candidate beat the user prompt on the search seeds
        sign = 1 if task == "improve" else -1
        assert sign * result["after"]["search_mean"] < sign * result["before"]["search_mean"]
    for s in (0, 5, 6):
        assert (out / "images" / f"user_seed{s}.png").is_file() and (out / "images" / f"best_seed{s}.png").is_file()
    assert (out / "comparison.png").is_file() and (out / "search.json").is_file()
    assert "results in" in capsys.readouterr().out


def test_every_subcommand_has_help(capsys):
    import importlib.util

    shipped = [n for n, (mod, _) in COMMANDS.items() if importlib.util.find_spec(mod) is not None]
    assert {"optimize", "space"} <= set(shipped)
    for name in shipped:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    assert "optimize" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "a blue cat"], "has no space for prompt"),
        (["--space", "missing.json"], "does not exist"),
        (["--model", "no/such/folder"], "does not exist"),
        (["--budget", "0"], "budget must be a positive"),
        (["--seeds", "0,1", "--budget", "1"], "smaller than one evaluation"),
        (["--seeds", "0", "--report-seeds", "0,1"], "held out"),
        (["--scheduler", "lms"], "unknown scheduler"),
        (["--k-schedule", "linear"], "unknown k schedule"),
        (["--k-schedule", "fixed-50"], "k \\+ grad_steps"),
    ],
)
def test_bad_input_gets_a_clear_error(space_file, tiny_sd, tiny_clip, tmp_path, capsys, args, message):
    base = {"--prompt": PROMPT, "--space": space_file, "--model": tiny_sd, "--judge": tiny_clip, "--steps": "6",
            "--budget": "6", "--seeds": "0", "--report-seeds": "5", "--gpo-iterations": "2", "--method": "gpo"}
    flags = dict(base)
    it = iter(args)
    for k in it:
        flags[k] = next(it)
    argv = ["optimize", "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"]
    for k, v in flags.items():
        argv += [k, v]
    assert main(argv) == 2
    import re

    assert re.search(message, capsys.readouterr().err), message


def test_unknown_task_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["optimize", "--prompt", "x", "--space", "s", "--model", "m", "--out", "o", "--task", "destroy"])
    assert "invalid choice" in capsys.readouterr().err


def test_empty_prompt_and_trivial_space(tmp_path, tiny_sd, tiny_clip, capsys):
    from dpo_diff.space import SearchSpace

    path = tmp_path / "s.json"
    save_spaces([SearchSpace("a cat")], path)
    rc = main(["optimize", "--prompt", "a cat", "--space", str(path), "--model", tiny_sd, "--judge", tiny_clip,
               "--steps", "4", "--budget", "4", "--report-seeds", "3", "--out", str(tmp_path / "o"), "--quiet",
               "--device", "cpu"])
    assert rc == 0
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert "nothing to search" in result["note"] and result["best"]["prompt"] == "a cat"
    assert main(["optimize", "--prompt", " ", "--space", str(path), "--model", tiny_sd, "--out", "o"]) == 2


def test_import_is_cheap():
    code = "import sys, dpo_diff, dpo_diff.cli; print(sorted(m for m in ('torch','diffusers','transformers','nltk'," \
           "'openai','sentence_transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_prompt_over_eight_chunks_is_refused(tmp_path, tiny_sd, tiny_clip, capsys):
    # prompts over 77 tokens are encoded in 75-token chunks (tests/test_long_prompts.py), up to 8 of them
    prompt = " ".join(["red"] * 601) + " dog"
    path = tmp_path / "s.json"
    save_spaces([space_from_substitutes(prompt, antonyms={"dog": ["cat"]})], path)
    rc = main(["optimize", "--prompt", prompt, "--space", str(path), "--model", tiny_sd, "--judge", tiny_clip,
               "--steps", "4", "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"])
    assert rc == 2 and "has 602 tokens but the text encoder takes at most 8 chunks of 75" in capsys.readouterr().err


def test_an_existing_run_is_never_silently_replaced(space_file, tiny_sd, tiny_clip, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--method", "random") == 0
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--method", "random") == 2
    assert "--resume" in capsys.readouterr().err
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--method", "random", "--resume") == 0
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--method", "random", "--overwrite") == 0


def test_an_empty_prompt_is_refused_naming_the_files_prompt(space_file, tiny_sd, tmp_path, capsys):
    assert main(["optimize", "--prompt", "", "--space", space_file, "--model", tiny_sd, "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--prompt is empty" in err and repr(PROMPT) in err and not (tmp_path / "o").exists()


def test_a_space_without_slots_for_the_task_is_refused(tmp_path, tiny_sd, capsys):
    path = tmp_path / "syn.json"
    save_spaces([space_from_substitutes(PROMPT, {"dog": ["hound"], "grass": ["lawn"]}, None)], path)
    assert main(["optimize", "--prompt", PROMPT, "--space", str(path), "--task", "improve", "--model", tiny_sd,
                 "--device", "cpu", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has only positive slots" in err and "words: dog, grass" in err
    assert "--task improve searches negative" in err and "--target positive" in err and "Traceback" not in err


def test_resume_of_a_different_run_points_at_overwrite(space_file, tiny_sd, tiny_clip, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--method", "random", "--budget", "2") == 0
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--method", "random", "--resume") == 2
    err = capsys.readouterr().err
    assert "pass --overwrite (instead of --resume)" in err and "without --resume" not in err
    assert run_optimize(space_file, tiny_sd, tiny_clip, out, "--method", "random", "--overwrite") == 0


@pytest.mark.parametrize("device, message", [("cuda", "CPU-only build"), ("cuda:0", "CPU-only build"),
                                             ("gpu", "unknown device 'gpu'")])
@pytest.mark.parametrize("command", ["optimize", "select", "bench"])
def test_an_unusable_device_is_one_clear_line(space_file, tmp_path, capsys, monkeypatch, device, message, command):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)  # what a CPU-only torch build reports, on any machine
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    argv = {"optimize": ["optimize", "--prompt", PROMPT, "--space", space_file],
            "select": ["select", "--prompts", str(prompts)],
            "bench": ["bench", "--prompts", str(prompts), "--spaces", space_file]}[command]
    out = tmp_path / ("o.json" if command == "select" else "o")
    assert main([*argv, "--model", "m", "--device", device, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "AssertionError" not in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_start_sets_transformers_logging_to_error(space_file, tmp_path):
    code = ("import sys; from dpo_diff.cli import main; main(['space', 'show', sys.argv[1]]); "
            "import transformers; print(transformers.logging.get_verbosity())")
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    proc = subprocess.run([sys.executable, "-c", code, space_file], capture_output=True, text=True, env=env,
                          check=True)
    assert proc.stdout.splitlines()[-1] == "40" and proc.stderr == ""  # logging.ERROR; nothing on stderr


@pytest.mark.parametrize("bad", ["missing", "not-a-model"])
@pytest.mark.parametrize("command, which", [("optimize", "--model"), ("optimize", "--judge"), ("bench", "--model")])
def test_a_bad_model_path_fails_before_anything_is_written(space_file, tmp_path, capsys, command, which, bad):
    """Given --steps and --guidance nothing else looks the model up: the check must still come before config.json
    (optimize) or bench.json and spaces.json (bench) are written, and name the path."""
    from dpo_diff.world import generator_path, judge_path

    path = tmp_path / bad
    if bad == "not-a-model":
        path.mkdir()
        (path / "weights.bin").write_bytes(b"")
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    models = {"--model": str(generator_path()), "--judge": str(judge_path()), which: str(path)}
    argv = {"optimize": ["optimize", "--prompt", PROMPT, "--space", space_file, "--quiet"],
            "bench": ["bench", "--prompts", str(prompts), "--spaces", space_file, "--methods", "user"]}[command]
    out = tmp_path / "o"
    assert main([*argv, *[a for kv in models.items() for a in kv], "--steps", "4", "--guidance", "7.5", "--device",
                 "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"folder {str(path)!r}" in err and ("does not exist" if bad == "missing" else "has no ") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["optimize", "bench"])
@pytest.mark.parametrize("flag, value, bad, role, message", [
    ("--objective", "{bad}=1", "clip:{tmp}/missing", "objective term", "CLIP judge folder '{tmp}/missing' does not"),
    ("--objective", "world:judge=1,{bad}<=+0.1", "vqa:{tmp}/empty", "objective term", "has no config.json"),
    ("--select-judge", "{bad}", "aesthetic:{tmp}/no.pth", "selection judge", "weights file '{tmp}/no.pth' does not"),
    ("--eval-judges", "world:judge_b,{bad}", "aesthetic:{tmp}/w.pth[clip={tmp}/none]", "evaluation judge",
     "CLIP backbone folder '{tmp}/none' does not exist"),
])
def test_a_bad_path_in_a_judge_spec_fails_before_anything_is_written(space_file, tmp_path, capsys, command, flag,
                                                                     value, bad, role, message):
    """As a bad --model or --judge: refused before config.json (optimize) or the bench folder is written, in one
    line that names the spec as given."""
    from dpo_diff.world import generator_path, judge_path

    (tmp_path / "empty").mkdir()
    (tmp_path / "w.pth").write_bytes(b"")
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    bad, message = bad.format(tmp=tmp_path), message.format(tmp=tmp_path)
    argv = {"optimize": ["optimize", "--prompt", PROMPT, "--space", space_file, "--quiet"],
            "bench": ["bench", "--prompts", str(prompts), "--spaces", space_file, "--methods", "user"]}[command]
    out = tmp_path / "o"
    assert main([*argv, "--model", str(generator_path()), "--judge", str(judge_path()), flag, value.format(bad=bad),
                 "--steps", "4", "--guidance", "7.5", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{role} {bad!r}: " in err and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


class _FirstGeneration(Exception):
    """Raised where a run would generate its first image: the test has seen what it needs by then."""


@pytest.mark.parametrize("method, budget, skipped", [("hybrid", "4", True), ("gpo", "4", True),
                                                     ("hybrid", "40", False)])
def test_optimize_says_before_generating_that_gpo_will_be_skipped(tmp_path, capsys, monkeypatch, method, budget,
                                                                  skipped):
    from dpo_diff.problem import Problem

    said: list[str] = []

    def first_generation(self, chunk, steps=None):
        said.append(capsys.readouterr().err)
        raise _FirstGeneration

    monkeypatch.setattr(Problem, "_generate", first_generation)
    with pytest.raises(_FirstGeneration):  # the shapes world (no --model): 48 candidates, so nothing is enumerated
        main(["optimize", "--prompt", "a green orb", "--method", method, "--budget", budget, "--steps", "4",
              "--report-seeds", "5", "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"])
    warnings = [line for line in said[0].splitlines() if "GPO" in line]
    if not skipped:
        assert warnings == []
        return
    assert len(warnings) == 1 and warnings[0].startswith(f"dpo-diff: warning: --method {method} will skip its GPO "
                                                         f"stage")
    assert "--budget 4 pays for 0 GPO iteration(s)" in warnings[0] and "minimum of 3" in warnings[0]
    assert "larger --budget" in warnings[0] and "another --method" in warnings[0]
