"""``dpo-diff optimize`` and ``dpo-diff bench`` end to end on tiny SD 3.x and FLUX.1 folders (CPU, seconds each)."""

from __future__ import annotations

import json

import pytest

from conftest import CLI_PROMPT as PROMPT  # the prompt of the space_file fixture
from dpo_diff.bench.results import load_records
from dpo_diff.cli import main

# FLUX: improve needs true CFG (--guidance > 1 is FluxPipeline's true_cfg_scale); attack runs without CFG.
CASES = [("tiny_sd3", "improve", "7.5"), ("tiny_flux", "improve", "3"), ("tiny_flux_schnell", "attack", "1")]


@pytest.mark.parametrize("which, task, guidance", CASES)
def test_optimize(which, task, guidance, space_file, tiny_clip, tmp_path, request):
    out = tmp_path / "run"
    argv = ["optimize", "--prompt", PROMPT, "--space", space_file, "--model", request.getfixturevalue(which),
            "--judge", tiny_clip, "--task", task, "--method", "gpo", "--steps", "4", "--budget", "4",
            "--gpo-iterations", "2", "--seeds", "0", "--report-seeds", "5", "--guidance", guidance,
            "--out", str(out), "--quiet", "--device", "cpu"]
    if task == "improve":  # the negative prompt through FLUX's true CFG: the file's antonym terms only
        argv += ["--target", "negative"]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert 0 < result["cost"] <= 4 and result["user_prompt"] == PROMPT
    if task == "improve":
        assert result["best"]["prompt"] == PROMPT
    else:
        assert result["best"]["negative_prompt"] == ""
    assert (out / "images" / "best_seed5.png").is_file()


def test_flux_improve_without_true_cfg_is_a_clear_error(space_file, tiny_clip, tiny_flux, tmp_path, capsys):
    argv = ["optimize", "--prompt", PROMPT, "--space", space_file, "--model", tiny_flux, "--judge", tiny_clip,
            "--method", "gpo", "--steps", "4", "--budget", "4", "--seeds", "0", "--report-seeds", "5",
            "--guidance", "1", "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "true classifier-free guidance" in err and "true_cfg_scale" in err, err


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_bench(which, space_file, tiny_clip, tmp_path, request):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    out = tmp_path / "bench"
    argv = ["bench", "--prompts", str(prompts), "--spaces", space_file, "--model", request.getfixturevalue(which),
            "--judge", tiny_clip, "--methods", "user,gpo", "--steps", "4", "--budget", "4", "--gpo-iterations", "2",
            "--seeds", "0", "--report-seeds", "5", "--guidance", "3", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    records = load_records(out)
    assert sorted(r["method"] for r in records) == ["gpo", "user"]
