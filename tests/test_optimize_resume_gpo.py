"""optimize: GPO continues from its checkpoint on --resume; re-ranking on validation seeds through the CLI."""

import json

import pytest

from dpo_diff.cli import main
from dpo_diff.optimize import GPO_STATE, OptimizeConfig, load_gpo_state, optimize
from dpo_diff.search import gradient
from dpo_diff.search.gradient import GradientSearchConfig
from dpo_diff.space import space_from_substitutes

PROMPT = "a red dog on the grass"
SPACE = space_from_substitutes(PROMPT, {}, {"red": ["blue", "green"], "grass": ["sand", "snow"], "dog": ["cat"]})


def config(tiny_sd, tiny_clip, out, **kw):
    gpo = GradientSearchConfig(iterations=4, samples=2, budget_share=0.6, score_every=2)
    return OptimizeConfig(prompt=PROMPT, task="improve", model=tiny_sd, judge=tiny_clip, budget=14, steps=6,
                          seeds=(0,), report_seeds=(5,), out=str(out), gpo=gpo, method="hybrid", **kw)


def test_resume_continues_gpo_from_its_checkpoint(tiny_sd, tiny_clip, tmp_path, monkeypatch):
    full = optimize(config(tiny_sd, tiny_clip, tmp_path / "full"), space=SPACE, progress=False)
    steps = []
    real_step = gradient._gpo_step

    def crashing_step(*a, **k):
        if len(steps) == 2:
            raise KeyboardInterrupt
        steps.append(1)
        return real_step(*a, **k)

    monkeypatch.setattr(gradient, "_gpo_step", crashing_step)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        optimize(config(tiny_sd, tiny_clip, out), space=SPACE, progress=False)
    ckpt = load_gpo_state(out / GPO_STATE)
    assert ckpt is not None and len(ckpt["log"]) == 2
    steps.clear()
    monkeypatch.setattr(gradient, "_gpo_step", lambda *a, **k: (steps.append(1), real_step(*a, **k))[1])
    resumed = optimize(config(tiny_sd, tiny_clip, out), space=SPACE, progress=False, resume=True)
    assert len(steps) == 2, "GPO learned again instead of continuing from its checkpoint"
    assert resumed["best"] == full["best"] and resumed["cost"] == pytest.approx(full["cost"])
    search = json.loads((out / "search.json").read_text())
    assert search["extra"]["logits"] == json.loads((tmp_path / "full" / "search.json").read_text())["extra"]["logits"]


def test_an_unreadable_gpo_checkpoint_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / GPO_STATE
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="GPO learns again"):
        assert load_gpo_state(path) is None
    assert load_gpo_state(tmp_path / "absent.pt") is None


def test_rerank_through_the_cli(tiny_sd, tiny_clip, tmp_path):
    from dpo_diff.space import save_spaces

    spaces = tmp_path / "spaces.json"
    save_spaces([SPACE], spaces)
    out = tmp_path / "run"
    args = ["optimize", "--prompt", PROMPT, "--space", str(spaces), "--model", tiny_sd, "--judge", tiny_clip,
            "--steps", "6", "--budget", "30", "--seeds", "0", "--report-seeds", "5", "--method", "random",
            "--rerank-top", "3", "--validation-seeds", "1,2", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    search = json.loads((out / "search.json").read_text())
    sel = search["extra"]["selection"]
    assert sel["validation_seeds"] == [1, 2] and len(sel["candidates"]) == 3 and sel["cost"] == 6
    assert search["cost"] <= 30 + 1e-9 and search["best"]["candidate"] == sel["candidates"][0]["candidate"]
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["selection"] == {"rerank_top": 3, "validation_seeds": [1, 2], "num_validation": 2,
                                   "max_share": 0.2}
    clash = args[:-7] + ["--validation-seeds", "5", "--out", str(tmp_path / "clash"), "--quiet", "--device", "cpu"]
    assert main(clash) != 0


def test_reranking_is_the_default_with_validation_seeds_chosen_around_the_others():
    cfg = OptimizeConfig(prompt=PROMPT, model="m", seeds=(0,), report_seeds=(1, 5))
    assert cfg.selection.rerank_top == 4 and cfg.selection.validation_seeds == (2, 3)
    again = OptimizeConfig.from_dict(cfg.to_dict())
    assert again.selection == cfg.selection
