"""greedy and the sparse proposal from the command line (optimize, bench) on the tiny SD model."""

import json

from conftest import CLI_PROMPT as PROMPT
from dpo_diff.cli import main


def optimize_args(space_file, tiny_sd, tiny_clip, out, *extra):
    return ["optimize", "--prompt", PROMPT, "--space", space_file, "--model", tiny_sd, "--judge", tiny_clip,
            "--steps", "4", "--guidance", "7.5", "--budget", "8", "--seeds", "0", "--report-seeds", "5",
            "--out", str(out), "--quiet", "--device", "cpu", "--rerank-top", "0", *extra]


def test_optimize_greedy_records_its_settings_and_scores_single_edits_first(space_file, tiny_sd, tiny_clip,
                                                                           tmp_path):
    out = tmp_path / "greedy"
    assert main(optimize_args(space_file, tiny_sd, tiny_clip, out, "--method", "greedy", "--beam", "2",
                              "--max-changes", "2")) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["method"] == "greedy" and config["greedy"]["beam"] == 2 and config["greedy"]["max_changes"] == 2
    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert lines[0]["source"] == "user" and all(sum(1 for c in r["candidate"] if c) <= 2 for r in lines)
    assert 0 < json.loads((out / "result.json").read_text())["cost"] <= 8 + 1e-9


def test_optimize_random_with_the_sparse_proposal(space_file, tiny_sd, tiny_clip, tmp_path):
    out = tmp_path / "sparse"
    assert main(optimize_args(space_file, tiny_sd, tiny_clip, out, "--method", "random", "--proposal", "sparse",
                              "--sparsity-mean", "1")) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["proposal"] == {"kind": "sparse", "mean_changes": 1.0}
    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert lines and all(sum(1 for c in r["candidate"] if c) == 1 for r in lines)


def test_bad_sparse_settings_are_refused_before_anything_runs(space_file, tiny_sd, tiny_clip, tmp_path, capsys):
    for extra, message in ((["--sparsity-mean", "0.5"], "mean_changes must be a finite number >= 1"),
                           (["--beam", "0"], "beam must be an integer >= 1"),
                           (["--greedy-screen", "full"], "cheaper fidelity")):
        out = tmp_path / "bad"
        assert main(optimize_args(space_file, tiny_sd, tiny_clip, out, "--method", "greedy", *extra)) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not out.exists()


def test_bench_keys_the_sparse_proposal_only_for_the_samplers(tiny_sd, tiny_clip, tmp_path):
    from dpo_diff.bench.config import BenchConfig

    common = {"model": tiny_sd, "judge": tiny_clip, "methods": ("random", "greedy", "gpo")}
    uniform, sparse = BenchConfig(**common), BenchConfig(**common, proposal={"kind": "sparse"})
    assert uniform.method_key("random") != sparse.method_key("random")
    assert uniform.method_key("gpo") == sparse.method_key("gpo") and uniform.key() == sparse.key()
    assert "proposal" not in uniform.method_settings("random")  # fingerprints from before the proposal existed


def test_bench_runs_greedy_and_sparse_random(tiny_sd, tiny_clip, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red dog on the grass\n")
    out = tmp_path / "bench"
    args = ["bench", "--prompts", str(prompts), "--model", tiny_sd, "--judge", tiny_clip, "--methods",
            "random,greedy", "--steps", "4", "--guidance", "7.5", "--budget", "6", "--seeds", "0",
            "--report-seeds", "5", "--device", "cpu", "--out", str(out), "--rerank-top", "0", "--proposal", "sparse"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["greedy", "random"]
    assert all(r["cost"] <= 6 + 1e-9 for r in records)
