"""What a run shows at the terminal: a progress bar to the end (re-ranking and the report's images included), a
short human summary (JSON on request), rounded costs, and the offline hint with today's download command."""

import json
import re

import pytest

from conftest import CLI_PROMPT as PROMPT
from dpo_diff.cli import main
from dpo_diff.loading import ModelNotFoundError, resolve_model
from dpo_diff.space import save_spaces, space_from_substitutes


@pytest.fixture
def big_space(tmp_path) -> str:
    """A space (antonym terms, one synonym swap) too large to enumerate at budget 20, so the search re-ranks on
    validation seeds."""
    s = space_from_substitutes(PROMPT, {"dog": ["hound"]}, {"red": ["blue", "green", "pink", "white"],
                                                           "grass": ["sand", "snow", "mud"], "dog": ["cat", "bird"]})
    save_spaces([s], tmp_path / "spaces.json")
    return str(tmp_path / "spaces.json")


def optimize_args(space, tiny_sd, tiny_clip, out, *extra):
    return ["optimize", "--prompt", PROMPT, "--space", space, "--model", tiny_sd, "--judge", tiny_clip, "--steps", "2",
            "--budget", "20", "--seeds", "0", "--report-seeds", "5,6", "--method", "random", "--out", str(out),
            "--device", "cpu", *extra]


def last_state(stderr: str, desc: str) -> str:
    """The last drawing of the progress bar called ``desc``."""
    states = [s for s in re.split(r"[\r\n]", stderr) if s.startswith(desc)]
    assert states, f"no {desc!r} bar in {stderr!r}"
    return states[-1]


def test_the_bar_reaches_the_end_and_the_summary_is_short(big_space, tiny_sd, tiny_clip, tmp_path, capsys):
    assert main(optimize_args(big_space, tiny_sd, tiny_clip, tmp_path / "run")) == 0
    captured = capsys.readouterr()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["cost"] == pytest.approx(20) and json.loads((tmp_path / "run" / "search.json").read_text())[
        "extra"]["selection"]["candidates"]  # re-ranked: the part of the budget the bar used to miss
    assert "100%" in last_state(captured.err, "random (improve)") and "20.0/20 gen" in last_state(
        captured.err, "random (improve)")
    assert "6.0/6 gen" in last_state(captured.err, "user vs best on all seeds")  # 2 prompts x 3 seeds
    out = captured.out
    assert not out.lstrip().startswith("{")  # no JSON blob for people
    before, after = result["before"]["report_mean"], result["after"]["report_mean"]
    assert f"loss {before:.4f} -> {after:.4f}" in out and "cost 20 of budget 20" in out
    assert f"user : {PROMPT!r}" in out and f"best : {result['best']['prompt']!r}" in out


def test_json_on_request_is_the_whole_stdout(space_file, tiny_sd, tiny_clip, tmp_path, capsys):
    args = optimize_args(space_file, tiny_sd, tiny_clip, tmp_path / "run", "--budget", "6", "--quiet", "--json")
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)  # nothing but the document
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert {k: printed[k] for k in ("best", "before", "after")} == {k: result[k] for k in ("best", "before", "after")}
    assert printed["out"] == str(tmp_path / "run") and printed["cost"] == pytest.approx(result["cost"])


def test_a_cost_with_float_noise_is_shown_rounded():
    from dpo_diff.commands.optimize import json_summary, summary_lines

    cost = 5.0
    for _ in range(50):
        cost += 0.7  # fractional preview costs, charged one by one
    assert str(cost) == "40.00000000000001"
    result = {"task": "attack", "method": "mf", "user_prompt": "a cat", "best": {"prompt": "a kitty",
              "negative_prompt": ""}, "before": {"search_mean": 0.25, "report_mean": None},
              "after": {"search_mean": 0.5, "report_mean": None}, "cost": cost, "budget": 40.0, "evaluated": 12,
              "note": ""}
    assert summary_lines(result) == ["attack (higher loss is better), method mf", "  user : 'a cat'",
                                     "  best : 'a kitty'", "  loss 0.2500 -> 0.5000 on the search seeds",
                                     "  cost 40 of budget 40, 12 candidates evaluated"]
    assert '"cost": 40.0' in json_summary(result, "runs/x")


def test_the_offline_hint_names_the_hf_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("someone/not-a-real-model-xyz", "model")
    assert "`hf download someone/not-a-real-model-xyz --local-dir DIR`" in str(e.value)
    assert "huggingface-cli" not in str(e.value)


def test_the_comparison_grid_names_each_images_seed_and_loss(space_file, tiny_sd, tiny_clip, tmp_path, monkeypatch):
    import dpo_diff.images as images

    drawn = {}
    real = images.save_grid

    def spy(rows, labels, path, cell=128, captions=None):
        drawn["captions"] = captions
        real(rows, labels, path, cell, captions)

    monkeypatch.setattr(images, "save_grid", spy)
    assert main(optimize_args(space_file, tiny_sd, tiny_clip, tmp_path / "run", "--budget", "6", "--quiet")) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    expected = [[f"seed {s} ({kind})\nloss {result[row][part][str(s)]:.4f}"
                 for part, kind, seeds in (("search_losses", "search", [0]), ("report_losses", "held-out", [5, 6]))
                 for s in seeds] for row in ("before", "after")]
    assert drawn["captions"] == expected
    from PIL import Image

    with Image.open(tmp_path / "run" / "comparison.png") as grid:
        assert grid.size == (3 * 128, 2 * (14 + 128 + 2 * images.CAPTION_LINE))


def test_captions_are_drawn_under_the_images(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from dpo_diff.images import CAPTION_LINE, save_grid

    rows = [[torch.ones(3, 8, 8)] * 2]  # white images: any dark pixel below them is caption text
    save_grid(rows, [""], tmp_path / "plain.png", cell=64)
    save_grid(rows, [""], tmp_path / "captioned.png", cell=64, captions=[["seed 1\nloss 0.5", "seed 2\nloss 0.7"]])
    with Image.open(tmp_path / "plain.png") as plain, Image.open(tmp_path / "captioned.png") as captioned:
        assert captioned.height == plain.height + 2 * CAPTION_LINE
        strip = np.asarray(captioned.convert("L"))[14 + 64:]
        assert (strip[:, :64] < 128).any() and (strip[:, 64:] < 128).any()  # text under each image
