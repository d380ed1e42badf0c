"""Each task's defaults (dpo_diff.search.TASK_DEFAULTS): improve runs greedy search over the hybrid space (synonym
swaps with antonym negative-prompt terms), attack random search over synonym rewrites; a user's choice wins, and a
resumed run keeps the method it started with."""

import json

import pytest

from conftest import CLI_PROMPT
from dpo_diff.cli import main
from dpo_diff.optimize import select_target
from dpo_diff.space import load_spaces, save_spaces, space_from_substitutes
from dpo_diff.space_builder import build_task_spaces, task_space_kind
from dpo_diff.world.spaces import world_space

# The bundled shapes world, seconds-long: few steps, a tiny budget, one report seed, no re-ranking.
FAST = ["--steps", "4", "--budget", "2", "--report-seeds", "5", "--rerank-top", "0", "--quiet", "--device", "cpu"]
IMPROVE, ATTACK = "a green orb", "a big purple circle in the center"


def optimize_world(tmp_path, prompt: str, *extra: str) -> dict:
    """``dpo-diff optimize`` on the shapes world; returns config.json (the run's config and searched space)."""
    assert main(["optimize", "--prompt", prompt, "--out", str(tmp_path), *FAST, *extra]) == 0
    return json.loads((tmp_path / "config.json").read_text())


def targets(space: dict) -> set[str]:
    return {slot["target"] for slot in space["slots"]}


def test_task_space_kind_is_hybrid_for_improve_and_synonym_for_attack():
    assert task_space_kind("improve") == "hybrid" and task_space_kind("attack") == "synonym"
    with pytest.raises(ValueError, match="unknown task 'edit'"):
        task_space_kind("edit")


def test_the_world_builds_the_kind_asked_for():
    def built(task, kind=None):
        return {s.target for s in build_task_spaces([IMPROVE], task, kind=kind, world=True).spaces[IMPROVE].slots}

    assert built("improve") == {"positive", "negative"}  # the task's: hybrid (the world's "both")
    assert built("improve", "antonym") == {"negative"} and built("attack") == {"positive"}
    with pytest.raises(ValueError, match="the shapes world builds antonym, synonym, hybrid spaces"):
        built("improve", "nplib")


def test_improves_auto_target_takes_every_slot_of_a_space_with_negative_terms():
    hybrid, antonym = world_space(IMPROVE, "improve", "both"), world_space(IMPROVE, "improve")
    assert select_target(hybrid, "improve", "auto") == hybrid
    assert select_target(hybrid, "improve", "negative") == antonym  # the paper's negative-only search
    assert select_target(antonym, "improve", "auto") == antonym
    assert {s.target for s in select_target(hybrid, "attack", "auto").slots} == {"positive"}
    with pytest.raises(ValueError, match="has only positive slots"):
        select_target(world_space(IMPROVE, "improve", "synonym"), "improve", "auto")


def test_optimize_without_method_runs_each_tasks_default(tmp_path):
    improve = optimize_world(tmp_path / "improve", IMPROVE, "--task", "improve")
    assert (improve["config"]["method"], improve["config"]["proposal"]["kind"]) == ("greedy", "uniform")
    assert targets(improve["space"]) == {"positive", "negative"}  # greedy over the whole hybrid space
    assert targets(load_spaces(tmp_path / "improve" / "space.json")[IMPROVE].to_dict()) == {"positive", "negative"}
    attack = optimize_world(tmp_path / "attack", ATTACK, "--task", "attack")
    assert (attack["config"]["method"], attack["config"]["proposal"]["kind"]) == ("random", "uniform")
    assert targets(attack["space"]) == {"positive"}


def test_a_users_method_and_target_win(tmp_path):
    named = optimize_world(tmp_path / "named", IMPROVE, "--method", "random", "--proposal", "sparse")
    assert (named["config"]["method"], named["config"]["proposal"]["kind"]) == ("random", "sparse")
    negative = optimize_world(tmp_path / "negative", IMPROVE, "--target", "negative")
    assert negative["config"]["method"] == "greedy" and targets(negative["space"]) == {"negative"}
    result = json.loads((tmp_path / "negative" / "result.json").read_text())
    assert result["best"]["prompt"] == IMPROVE  # negative-prompt terms only: the prompt stays the user's


def test_a_negative_only_space_file_still_improves(tmp_path):
    path = tmp_path / "spaces.json"
    save_spaces([space_from_substitutes(IMPROVE, antonyms={"green": ["red", "blue"]})], path)
    run = optimize_world(tmp_path / "run", IMPROVE, "--space", str(path))
    assert targets(run["space"]) == {"negative"} and run["config"]["method"] == "greedy"


def test_resume_keeps_the_method_the_run_started_with(tmp_path):
    """A run started with another method (e.g. before the task's default changed) resumes without --method."""
    out = tmp_path / "run"
    assert optimize_world(out, IMPROVE, "--method", "random")["config"]["method"] == "random"
    resumed = optimize_world(out, IMPROVE, "--resume")
    assert resumed["config"]["method"] == "random" and resumed["config"]["proposal"]["kind"] == "uniform"
    assert optimize_world(out, IMPROVE, "--method", "greedy", "--overwrite")["config"]["method"] == "greedy"
    assert optimize_world(out, IMPROVE, "--resume")["config"]["method"] == "greedy"


def test_help_says_each_tasks_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["optimize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "greedy for improve, random for attack" in text and "uniform for improve, uniform for attack" in text
    assert "hybrid for improve, synonym for attack" in text and "--target negative with --task improve" in text


def test_bench_builds_the_tasks_space_and_keeps_its_results_apart_from_the_papers(tmp_path):
    from dpo_diff.bench.config import BenchConfig, BenchError

    def keyed(**kw):
        return BenchConfig(world=True, methods=("user", "greedy"), **kw).keyed_settings()

    default, paper = keyed(task="improve"), keyed(task="improve", space_kind="antonym")
    assert default["space_kind"] == "hybrid" and default["improve_target"] == "both"
    # the antonym space is keyed as a bench without --space-kind was before the hybrid default: those folders resume
    assert paper["space_kind"] is None and "improve_target" not in paper
    assert keyed(task="attack")["space_kind"] is None
    with pytest.raises(BenchError, match="no NPLib terms"):
        keyed(task="improve", space_kind="nplib")
    files = {}
    for name, negative_only in (("hybrid", False), ("antonym", True)):
        files[name] = tmp_path / f"{name}.json"
        save_spaces([world_space(IMPROVE, "improve", "antonym" if negative_only else "both")], files[name])
    on_file = {name: BenchConfig(model="m", spaces=str(path), methods=("user",)).keyed_settings()
               for name, path in files.items()}
    assert on_file["hybrid"]["improve_target"] == "both" and "improve_target" not in on_file["antonym"]


def test_rejected_rewrites_leave_improves_negative_terms_to_answer(space_file, tiny_sd, tiny_clip, tmp_path):
    """In a hybrid space the meaning constraint judges the rewrites only: when it rejects every one, candidates of
    negative terms alone are still scored and may answer (the run is not reported as 'nothing admissible')."""
    out = tmp_path / "run"
    assert main(["optimize", "--prompt", CLI_PROMPT, "--space", space_file, "--model", tiny_sd, "--judge", tiny_clip,
                 "--method", "random", "--similarity-threshold", "0.9999", "--steps", "4", "--budget", "6",
                 "--seeds", "0", "--report-seeds", "5", "--rerank-top", "0", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    result = json.loads((out / "result.json").read_text())
    scored = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert all(e["prompt"] == CLI_PROMPT for e in scored)  # every rewrite was rejected...
    assert any(e["negative_prompt"] for e in scored)  # ...and negative terms were scored all the same
    assert not result["note"].startswith("no candidate passed the meaning constraint")
