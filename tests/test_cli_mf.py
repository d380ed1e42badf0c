"""mf and tpe from the command line (optimize, bench) on the tiny SD model: settings recorded, budgets honest."""

import json

import pytest

from conftest import CLI_PROMPT as PROMPT
from dpo_diff.cli import main


def optimize_args(space_file, tiny_sd, tiny_clip, out, *extra):
    return ["optimize", "--prompt", PROMPT, "--space", space_file, "--model", tiny_sd, "--judge", tiny_clip,
            "--steps", "5", "--guidance", "7.5", "--budget", "8", "--seeds", "0", "--report-seeds", "5",
            "--out", str(out), "--quiet", "--device", "cpu", *extra]


@pytest.mark.parametrize("method, extra", [
    ("mf", ["--mf-ladder", "steps:20%,full", "--mf-screen-share", "0.5", "--mf-rounds", "2"]),
    ("tpe", ["--tpe-ladder", "shortcut:1", "--tpe-keep", "0.5"]),
])
def test_optimize_mf_and_tpe(space_file, tiny_sd, tiny_clip, tmp_path, method, extra):
    out = tmp_path / method
    assert main(optimize_args(space_file, tiny_sd, tiny_clip, out, "--method", method, "--rerank-top", "0",
                              *extra)) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["method"] == method
    if method == "mf":
        assert config["mf"] == {"ladder": ["steps:20%", "full"], "screen_share": 0.5, "rounds": 2, "chunk": 32,
                                "min_screen": 8}
    else:
        assert config["tpe"]["ladder"] == ["shortcut:1"] and config["tpe"]["keep"] == 0.5
    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    cheap = "steps:1" if method == "mf" else "shortcut:1"
    assert {r["fidelity"] for r in lines} == {cheap, "full"}
    result = json.loads((out / "result.json").read_text())
    assert 0 < result["cost"] <= 8 + 1e-9
    assert json.loads((out / "best.json").read_text())["fidelity"] == "full"


def test_a_bad_ladder_is_refused_before_anything_runs(space_file, tiny_sd, tiny_clip, tmp_path, capsys):
    out = tmp_path / "bad"
    code = main(optimize_args(space_file, tiny_sd, tiny_clip, out, "--method", "mf", "--mf-ladder", "shortcut:9"))
    assert code != 0
    err = capsys.readouterr().err
    assert "K <= steps - 1 = 4" in err and "Traceback" not in err
    code = main(optimize_args(space_file, tiny_sd, tiny_clip, out, "--method", "mf", "--mf-ladder", "fast,full"))
    assert code != 0 and "use full, steps:N or shortcut:K" in capsys.readouterr().err


def test_bench_runs_mf_and_tpe_and_keys_their_settings(tiny_sd, tiny_clip, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red dog on the grass\n")
    out = tmp_path / "bench"
    args = ["bench", "--prompts", str(prompts), "--model", tiny_sd, "--judge", tiny_clip, "--methods",
            "random,mf,tpe", "--steps", "4", "--guidance", "7.5", "--budget", "6", "--seeds", "0",
            "--report-seeds", "5", "--device", "cpu", "--out", str(out), "--mf-ladder", "steps:1", "--rerank-top", "0"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["mf", "random", "tpe"]
    assert all(r["cost"] <= 6 + 1e-9 for r in records)
    # mf's settings are part of mf's records only: another ladder in the same folder is refused, naming it.
    args[args.index("--mf-ladder") + 1] = "steps:2"
    assert main(args) != 0
    assert 'mf.ladder: ["steps:1"] -> ["steps:2"]' in capsys.readouterr().err
