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
    improve = json.loads((tmp_path / "improve" / "result.json").read_text())
    assert improve["best"]["prompt"] == improve["user_prompt"]  # improve searches the negative prompt only
    out = capsys.readouterr().out
    assert "faithful" in out and "held-out seeds" in out
