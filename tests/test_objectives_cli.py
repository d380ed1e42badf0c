"""Objectives and cross-judge evaluation from the command line (optimize, bench, report, select) on tiny random
CLIP, SigLIP and aesthetic judges, offline."""

from __future__ import annotations

import json

import pytest

from dpo_diff.cli import main
from dpo_diff.space import save_spaces, space_from_substitutes

PROMPT = "a red dog on the grass"


@pytest.fixture(scope="module")
def judges(tmp_path_factory, tiny_clip) -> dict[str, str]:
    from dpo_diff.testing import save_aesthetic_weights, save_tiny_siglip

    root = tmp_path_factory.mktemp("judges")
    siglip = save_tiny_siglip(root / "siglip")
    aesthetic = save_aesthetic_weights(root / "aesthetic.pth", input_size=16)
    return {"clip": f"clip:{tiny_clip}", "siglip": f"siglip:{siglip}",
            "aesthetic": f"aesthetic:{aesthetic}[clip={tiny_clip}]"}


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    s = space_from_substitutes(PROMPT, {"dog": ["hound", "puppy"]}, {"red": ["blue", "green"], "grass": ["sand"]})
    path = tmp_path_factory.mktemp("spaces") / "spaces.json"
    save_spaces([s], path)
    return str(path)


def optimize_args(space_file, tiny_sd, out, *extra):
    return ["optimize", "--prompt", PROMPT, "--space", space_file, "--model", tiny_sd, "--steps", "4", "--budget",
            "6", "--gpo-iterations", "2", "--seeds", "0", "--report-seeds", "5,6", "--out", str(out), "--quiet",
            "--device", "cpu", "--rerank-top", "0", *extra]


@pytest.mark.parametrize("kind", ["clip", "siglip", "aesthetic"])
def test_each_judge_type_drives_optimize(kind, judges, space_file, tiny_sd, tmp_path):
    out = tmp_path / kind
    assert main(optimize_args(space_file, tiny_sd, out, "--objective", judges[kind], "--method", "gpo")) == 0
    result = json.loads((out / "result.json").read_text())
    name = next(iter(result["judges"]))
    assert result["judges"][name]["role"] == "objective" and name.startswith(kind)
    # normalised against the user prompt on the same seed: the user prompt scores 0
    assert result["before"]["search_losses"]["0"] == pytest.approx(0.0, abs=1e-5)
    assert result["objective"]["calibration"]["search_seeds"] == [0]
    assert set(result["objective"]["calibration"]["user_per_seed"]) == {"0", "5", "6"}
    assert result["objective"]["feasible_report"] is True


def test_weighted_objective_with_a_constraint_and_evaluators(judges, space_file, tiny_sd, tmp_path, capsys):
    out = tmp_path / "mixed"
    objective = f"{judges['clip']}=1,{judges['aesthetic']}=0.5,{judges['siglip']}<=+0.01"
    assert main(optimize_args(space_file, tiny_sd, out, "--objective", objective, "--eval-judges",
                              f"{judges['siglip']},{judges['clip']}", "--method", "hybrid")) == 0
    result = json.loads((out / "result.json").read_text())
    roles = {n.split(":")[0]: j["role"] for n, j in result["judges"].items()}
    assert roles == {"clip": "objective", "aesthetic": "objective", "siglip": "objective"}  # listed once each
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["objective"].count("<=+0.01") == 1 and len(config["eval_judges"]) == 2
    terms = result["objective"]["terms"]
    assert [t["weight"] for t in terms] == [1.0, 0.5, 0.0] and terms[2]["margin"] == 0.01
    # the chosen answer satisfies the constraint on the search seeds (or is the user prompt itself)
    siglip = next(j for n, j in result["judges"].items() if n.startswith("siglip"))
    assert siglip["best"]["search_losses"]["0"] <= siglip["user"]["search_losses"]["0"] + 0.01 + 1e-6
    printed = capsys.readouterr().out
    assert "judges (mean loss on the report seeds" in printed and "constraints hold on the report seeds" in printed
    # resuming the same configuration is accepted (specs are saved canonically)
    assert main(optimize_args(space_file, tiny_sd, out, "--objective", objective, "--eval-judges",
                              f"{judges['siglip']},{judges['clip']}", "--method", "hybrid", "--resume")) == 0


def test_attack_maximises_the_objective_under_a_constraint(judges, space_file, tiny_sd, tmp_path):
    out = tmp_path / "attack"
    objective = f"{judges['clip']}=1,{judges['aesthetic']}<=+0.05"
    assert main(optimize_args(space_file, tiny_sd, out, "--task", "attack", "--similarity-threshold", "0",
                              "--objective", objective, "--method", "random")) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["objective"]["sign"] == -1.0
    after, before = result["after"]["search_losses"]["0"], result["before"]["search_losses"]["0"]
    assert after >= before - 1e-6  # attack keeps the user prompt unless an answer raised J
    assert after < 100  # never an infeasible answer (those carry -1000 for attack)


def test_eval_judges_beside_the_plain_clip_judge(judges, space_file, tiny_sd, tiny_clip, tmp_path):
    out = tmp_path / "plain"
    assert main(optimize_args(space_file, tiny_sd, out, "--judge", tiny_clip, "--method", "random",
                              "--eval-judges", f"{judges['siglip']},{judges['aesthetic']}")) == 0
    result = json.loads((out / "result.json").read_text())
    assert [j["role"] for j in result["judges"].values()] == ["objective", "eval", "eval"]
    assert "objective" not in result  # the single judge's losses stay raw
    assert result["before"]["search_losses"]["0"] > 0


def test_bad_specs_fail_before_anything_runs(space_file, tiny_sd, tmp_path, capsys):
    assert main(optimize_args(space_file, tiny_sd, tmp_path / "bad", "--objective", "vit:x=1")) != 0
    assert "unknown judge kind 'vit'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def bench_run(judges, tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    prompts = root / "prompts.txt"
    prompts.write_text("a red dog on the grass\na blue car on a snowy road\n")
    out = root / "out"
    from dpo_diff.testing import save_tiny_clip

    other_clip = save_tiny_clip(root / "clip2", seed=5)  # an evaluator the searches never see
    objective = f"{judges['clip']}=1,{judges['aesthetic']}=0.2,{judges['siglip']}<=+0.5"
    args = ["bench", "--prompts", str(prompts), "--model", tiny_sd, "--methods", "user,random,hybrid", "--steps",
            "4", "--budget", "4", "--gpo-iterations", "2", "--seeds", "0", "--report-seeds", "5,6", "--device", "cpu",
            "--space-kind", "antonym", "--objective", objective, "--eval-judges", f"clip:{other_clip}",
            "--out", str(out)]
    assert main(args) == 0
    return out, args


def test_bench_records_carry_every_judge_and_the_report_shows_cross_judge_columns(bench_run, capsys):
    from dpo_diff.bench.results import load_records

    out, _ = bench_run
    records = load_records(out)
    assert {r["method"] for r in records} == {"user", "random", "hybrid"}
    for r in records:
        assert {j["role"] for j in r["judges"].values()} == {"objective", "eval"}
        assert all(len(j["user"]) == 2 and len(j["best"]) == 2 for j in r["judges"].values())
        assert r["user_report_losses"] == pytest.approx([0.0, 0.0], abs=1e-5)  # J of the user prompt
        assert r["feasible"] is True
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "Cross-judge evaluation" in text and "The loss above is the objective J" in text
    header = next(line for line in text.splitlines() if line.startswith("| method | Δ optimized"))
    assert "Δ clip:clip2 (eval)" in header and "Δ siglip:siglip" in header and "gain carries over" in header
    assert "feasible" in header
    assert "cross-judge" in (out / "report.html").read_text()


def test_bench_settings_keep_their_fingerprint_without_judges(tiny_sd):
    from dpo_diff.bench.config import BenchConfig, BenchError

    plain = BenchConfig(model=tiny_sd)
    assert "objective" not in plain.keyed_settings() and "eval_judges" not in plain.keyed_settings()
    with_eval = BenchConfig(model=tiny_sd, eval_judges=("clip:x",))
    assert with_eval.key() != plain.key()
    with pytest.raises(BenchError, match="needs --world"):
        BenchConfig(model=tiny_sd, eval_judges=("checker",))


def test_select_scores_with_an_objective(judges, tiny_sd, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red dog\na blue car\n")
    out = tmp_path / "sel.json"
    objective = f"{judges['clip']}=1,{judges['aesthetic']}=0.2"
    assert main(["select", "--prompts", str(prompts), "--model", tiny_sd, "--objective", objective, "--steps", "3",
                 "--threshold", "-100", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert len(json.loads(out.read_text())) == 2
    assert main(["select", "--prompts", str(prompts), "--model", tiny_sd, "--objective",
                 f"{objective},{judges['siglip']}<=+0.1", "--out", str(out), "--device", "cpu"]) != 0
