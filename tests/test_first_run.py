"""A new user's first hour: optimize without a space file or a model, a bench that finishes, stages never skipped
silently (issue 26, items 9-11)."""

import json
import shlex
from pathlib import Path

import pytest

from conftest import CLI_PROMPT
from dpo_diff.bench.results import FAILURES, load_records
from dpo_diff.cli import main
from dpo_diff.space import load_spaces, save_spaces, space_from_substitutes

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--steps", "4", "--budget", "4", "--seeds", "0", "--report-seeds", "5", "--rerank-top", "0", "--quiet",
        "--device", "cpu"]


def slots(space):
    return [(s.target, s.word, s.options) for s in space.slots]


def test_optimize_without_space_builds_the_tasks_space_and_saves_it(tiny_sd, tiny_clip, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["optimize", "--prompt", CLI_PROMPT, "--task", "improve", "--model", tiny_sd, "--judge", tiny_clip,
               "--out", str(out), *FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "no --space given: built the improve space" in printed and str(out / "space.json") in printed
    saved = load_spaces(out / "space.json")[CLI_PROMPT]
    # improve's default, the hybrid space: WordNet antonyms (red, on) as negative terms with synonym swaps, the swaps
    # pre-filtered by the meaning constraint as attack's rewrites are
    assert saved.meta["kind"] == "hybrid" and "constraint" in saved.meta
    assert {s.target for s in saved.slots} == {"positive", "negative"}
    assert {s.word for s in saved.slots if s.target == "negative"} >= {"red"}
    config = json.loads((out / "config.json").read_text())
    assert config["space"]["slots"] == saved.to_dict()["slots"]  # the run searched all of the saved space
    assert config["config"]["method"] == "greedy"
    result = json.loads((out / "result.json").read_text())
    assert result["slots"] == len(saved.slots) and result["cost"] > 0


def test_optimize_bench_and_space_build_build_one_attack_space(tiny_sd, tiny_clip, tmp_path, capsys):
    """The meaning pre-filter of 'space build --kind synonym' applies to the spaces optimize and bench build
    (MiniLM drops e.g. cat -> guy): one way to build a space."""
    prompt = "a big happy cat"
    built = tmp_path / "built.json"
    assert main(["space", "build", "--prompt", prompt, "--kind", "synonym", "--out", str(built)]) == 0
    reference = load_spaces(built)[prompt]
    assert reference.meta.get("dropped_by_constraint")  # the pre-filter had something to drop
    out = tmp_path / "opt"
    assert main(["optimize", "--prompt", prompt, "--task", "attack", "--model", tiny_sd, "--judge", tiny_clip,
                 "--out", str(out), *FAST]) == 0
    assert slots(load_spaces(out / "space.json")[prompt]) == slots(reference)
    prompts = tmp_path / "p.txt"
    prompts.write_text(prompt + "\n")
    bench = tmp_path / "bench"
    assert main(["bench", "--prompts", str(prompts), "--task", "attack", "--model", tiny_sd, "--judge", tiny_clip,
                 "--methods", "user", "--steps", "4", "--seeds", "0", "--report-seeds", "5", "--device", "cpu",
                 "--out", str(bench)]) == 0
    assert slots(load_spaces(bench / "spaces.json")[prompt]) == slots(reference)


def test_optimize_defaults_to_the_bundled_shapes_world(tmp_path, capsys):
    from dpo_diff.world import generator_path, judge_path

    out = tmp_path / "orb"
    rc = main(["optimize", "--prompt", "a green orb", "--task", "improve", "--out", str(out), "--steps", "4",
               "--budget", "2", "--report-seeds", "5", "--rerank-top", "0", "--quiet", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.index("bundled shapes world") < printed.index("built the improve space")  # said at the start
    config = json.loads((out / "config.json").read_text())["config"]
    assert Path(config["model"]) == generator_path() and Path(config["judge"]) == judge_path()
    space = load_spaces(out / "space.json")["a green orb"]
    assert space.slots and {s.source for s in space.slots} == {"shapes-world"}  # the world's own antonyms


def test_a_job_with_no_admissible_candidate_is_a_result_not_an_abort(tiny_sd, tiny_clip, tmp_path, capsys):
    spaces = tmp_path / "spaces.json"  # hand-made: no pre-filter, and every rewrite changes the meaning
    save_spaces([space_from_substitutes(CLI_PROMPT, {"dog": ["car", "house"], "grass": ["moon"]}, None)], spaces)
    prompts = tmp_path / "p.txt"
    prompts.write_text(CLI_PROMPT + "\n")
    out = tmp_path / "attack"
    args = ["bench", "--prompts", str(prompts), "--task", "attack", "--spaces", str(spaces), "--model", tiny_sd,
            "--judge", tiny_clip, "--methods", "user,random,tpe", "--steps", "4", "--budget", "2", "--seeds", "0",
            "--report-seeds", "5", "--similarity-threshold", "0.99", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    by = {r["method"]: r for r in load_records(out)}
    for method in ("random", "tpe"):
        assert by[method]["note"].startswith("no candidate passed the meaning constraint"), method
        assert by[method]["best"]["prompt"] == CLI_PROMPT
    assert "no candidate passed the meaning constraint" in capsys.readouterr().out
    assert main(args) == 0  # a rerun finds everything done


def test_a_failed_job_is_recorded_reported_and_retried(tiny_sd, tiny_clip, tmp_path, capsys, monkeypatch):
    from dpo_diff.bench import runner
    from dpo_diff.bench.report import write_report

    prompts = tmp_path / "p.txt"
    prompts.write_text(f"{CLI_PROMPT}\na big happy cat\n")
    out = tmp_path / "bench"
    args = ["bench", "--prompts", str(prompts), "--model", tiny_sd, "--judge", tiny_clip, "--methods",
            "user,random", "--steps", "4", "--budget", "2", "--seeds", "0", "--report-seeds", "5", "--device", "cpu",
            "--out", str(out)]
    real = runner.run_job

    def flaky(cfg, job, workdir):
        if job.prompt == CLI_PROMPT and job.method == "random":
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(cfg, job, workdir)

    monkeypatch.setattr(runner, "run_job", flaky)
    assert main(args) == 1  # the other jobs ran; the failure is said and recorded
    printed = capsys.readouterr().out
    assert "[failed] random" in printed and "1 failed" in printed
    assert len(load_records(out)) == 3
    assert "illegal memory access" in (out / FAILURES).read_text()
    report = write_report(out)["markdown"].read_text()
    assert "Failed jobs (1" in report and f"random on {CLI_PROMPT!r}: RuntimeError: CUDA error" in report
    assert "illegal memory access" in (out / "report.html").read_text()
    assert main([*args, "--fail-fast"]) == 2  # stops at the first failure when asked
    monkeypatch.setattr(runner, "run_job", real)
    assert main(args) == 0  # a rerun retries the failed job only
    assert len(load_records(out)) == 4
    assert "Failed jobs" not in write_report(out)["markdown"].read_text()


def test_a_skipped_gpo_stage_is_printed_and_marked_in_the_report(tiny_sd, tiny_clip, tmp_path, capsys):
    from dpo_diff.bench.report import write_report

    prompts = tmp_path / "p.txt"
    prompts.write_text(CLI_PROMPT + "\n")
    out = tmp_path / "bench"
    # Three search seeds at budget 4: GPO's 30% share cannot pay for its 3 minimum iterations.
    assert main(["bench", "--prompts", str(prompts), "--model", tiny_sd, "--judge", tiny_clip, "--methods",
                 "user,gpo", "--steps", "4", "--budget", "4", "--seeds", "0,1,2", "--report-seeds", "5",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert "note: GPO skipped" in capsys.readouterr().out
    report = write_report(out)["markdown"].read_text()
    assert "| gpo (GPO skipped on 1/1) |" in report and "Raise --budget" in report
    assert "GPO skipped on" in (out / "report.html").read_text()


def _bench_commands(text: str) -> list[list[str]]:
    joined = text.replace("\\\n", " ")
    return [shlex.split(line.split("#")[0].replace("[--ray [ADDRESS]]", ""))
            for line in joined.splitlines() if line.strip().startswith("dpo-diff bench ")]


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md", "src/dpo_diff/commands/bench.py"])
def test_documented_bench_examples_run_every_listed_method(doc):
    """GPO (alone and in the hybrid) runs at the settings the documentation shows, with a 50-step backbone."""
    from types import SimpleNamespace

    from dpo_diff.search import DEFAULT_RERANK_TOP
    from dpo_diff.search.gradient import GradientSearchConfig, affordable_iterations
    from dpo_diff.search.selection import SelectionConfig
    from dpo_diff.seeding import parse_seeds

    commands = [c for c in _bench_commands((ROOT / doc).read_text()) if "--methods" in c]
    assert commands, f"no bench example with --methods in {doc}"
    for argv in commands:
        flags = dict(zip(argv, argv[1:]))
        methods = flags["--methods"].split(",")
        if not {"gpo", "hybrid"} & set(methods):
            continue
        budget, seeds = float(flags.get("--budget", 40)), parse_seeds(flags.get("--seeds", "0"))
        usable = budget - SelectionConfig(DEFAULT_RERANK_TOP).resolved(seeds, (100, 101, 102)).reserve(budget)
        evaluator = SimpleNamespace(remaining=usable, evaluation_cost=len(seeds), budget=usable, cost=0.0,
                                    seeds=list(seeds))
        gpo = GradientSearchConfig()
        n = affordable_iterations(evaluator, gpo, 50)
        assert n >= gpo.min_iterations, (f"{doc}: {' '.join(argv)} affords {n} GPO iterations, fewer than "
                                         f"{gpo.min_iterations}: GPO would be skipped")


def test_bench_example_parser_sees_flags():
    cmds = _bench_commands("dpo-diff bench --prompts p \\\n    --methods user,gpo --budget 9 --seeds 0,1  # x\n")
    assert cmds == [["dpo-diff", "bench", "--prompts", "p", "--methods", "user,gpo", "--budget", "9", "--seeds",
                     "0,1"]]


def test_a_search_that_raises_because_nothing_was_admissible_is_a_result(tiny_sd, tiny_clip, tmp_path,
                                                                         monkeypatch):
    """A search that evaluated nothing (e.g. only previews of the user prompt) raises; optimize records it."""
    from dpo_diff.optimize import OptimizeConfig, optimize
    from dpo_diff.search import api

    def refusing_search(problem, **kwargs):
        assert problem.constraint(problem.user_prompt, ["a red car on the grass"]) == [False]
        raise ValueError("every candidate tried (1) was rejected by the meaning constraint")

    monkeypatch.setattr(api, "search", refusing_search)
    space = space_from_substitutes(CLI_PROMPT, {"dog": ["car"]}, None)
    cfg = OptimizeConfig(prompt=CLI_PROMPT, task="attack", model=tiny_sd, judge=tiny_clip, steps=4, budget=2,
                         seeds=(0,), report_seeds=(5,), device="cpu", out=str(tmp_path / "o"))
    result = optimize(cfg, space=space, constraint=lambda original, prompts: [p == original for p in prompts],
                      progress=False)
    assert result["note"].startswith("no candidate passed the meaning constraint")
    assert result["best"]["prompt"] == CLI_PROMPT and result["cost"] == 0
