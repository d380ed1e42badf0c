"""``dpo-diff optimize`` and ``dpo-diff bench`` end to end on the tiny SDXL (picked from its model_index.json)."""

from __future__ import annotations

import json

from dpo_diff.bench.results import load_records
from dpo_diff.cli import main
from dpo_diff.space import save_spaces, space_from_substitutes

PROMPT = "a red dog on the grass"


def test_optimize_and_bench_run_on_sdxl(tiny_sdxl, tiny_clip, tmp_path):
    space = tmp_path / "spaces.json"
    save_spaces([space_from_substitutes(PROMPT, {"dog": ["hound", "puppy"]}, {"red": ["blue", "green"]})], space)
    out = tmp_path / "run"
    assert main(["optimize", "--prompt", PROMPT, "--space", str(space), "--model", tiny_sdxl, "--judge", tiny_clip,
                 "--method", "hybrid", "--steps", "4", "--budget", "6", "--gpo-iterations", "2", "--seeds", "0",
                 "--report-seeds", "5", "--out", str(out), "--quiet", "--device", "cpu", "--grad-checkpointing"]) == 0
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["grad_checkpointing"] is True and config["dtype"] == "auto"
    assert result["user_prompt"] == PROMPT and 0 < result["cost"] <= 6
    assert (out / "images" / "best_seed5.png").is_file()

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    bench = tmp_path / "bench"
    assert main(["bench", "--prompts", str(prompts), "--spaces", str(space), "--model", tiny_sdxl, "--judge",
                 tiny_clip, "--methods", "user,gpo", "--steps", "4", "--budget", "4", "--gpo-iterations", "2",
                 "--seeds", "0", "--report-seeds", "5", "--device", "cpu", "--out", str(bench)]) == 0
    assert {r["method"] for r in load_records(bench)} == {"user", "gpo"}
