import json

from dpo_diff.cli import main


def test_demo_smoke_runs_end_to_end_on_the_shipped_world(tmp_path, capsys):
    assert main(["demo", "--smoke", "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert [r["task"] for r in summary] == ["improve", "attack"]
    for task in ("improve", "attack"):
        result = json.loads((tmp_path / task / "result.json").read_text())
        for who in ("user", "best"):
            assert 0 <= result["metrics"][who]["report"]["all_correct"] <= 1
        assert (tmp_path / task / "comparison.png").is_file()
    # each task's defaults: greedy over the hybrid space for improve, random over synonym rewrites for attack
    for task, method, targets in (("improve", "greedy", {"negative", "positive"}), ("attack", "random", {"positive"})):
        config = json.loads((tmp_path / task / "config.json").read_text())
        assert config["config"]["method"] == method and {s["target"] for s in config["space"]["slots"]} == targets
    out = capsys.readouterr().out
    assert "faithful" in out and "held-out seeds" in out
