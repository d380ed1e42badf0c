"""Sampling defaults per backbone (issue #20, item 8): ``--steps``/``--guidance`` default to the backbone's pipeline
defaults (the backend classes' ``DEFAULTS``), so FLUX runs without true CFG (one transformer call per step) unless a
negative prompt is searched; ``--help`` lists them and ``config.json`` records the values used."""

from __future__ import annotations

import argparse
import json

import pytest

from conftest import CLI_PROMPT as PROMPT
from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
from dpo_diff.backends.flux import FluxBackend
from dpo_diff.backends.sd3 import StableDiffusion3Backend
from dpo_diff.backends.sdxl import StableDiffusionXLBackend
from dpo_diff.cli import main
from dpo_diff.optimize import OptimizeConfig, pipeline_defaults, resolve_sampling
from dpo_diff.space import space_from_substitutes

# What --help must say for each backend class, filled from its DEFAULTS
HELP = {
    StableDiffusionBackend: ["{guidance} for SD 1.x/2.x", "{steps} for SD 1.x/2.x and SDXL"],
    StableDiffusionXLBackend: ["{guidance} for SDXL", "{steps} for SD 1.x/2.x and SDXL"],
    StableDiffusion3Backend: ["{guidance} for SD 3", "{steps} for SD 3 and FLUX"],
    FluxBackend: ["FLUX: {guidance}", "{negative_guidance} where a negative prompt is searched",
                  "{steps} for SD 3 and FLUX"],
}


@pytest.mark.parametrize("command", ["optimize", "bench"])
def test_help_lists_each_backbones_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls, phrases in HELP.items():
        for phrase in phrases:
            assert phrase.format(**cls.DEFAULTS) in text, (cls.__name__, phrase.format(**cls.DEFAULTS))


def test_the_pipelines_defaults():
    assert StableDiffusionBackend.DEFAULTS == {"steps": 50, "guidance": 7.5}
    assert StableDiffusionXLBackend.DEFAULTS == {"steps": 50, "guidance": 5.0}
    assert StableDiffusion3Backend.DEFAULTS == {"steps": 28, "guidance": 7.0}
    assert FluxBackend.DEFAULTS == {"steps": 28, "guidance": 1.0, "negative_guidance": 4.0}


def test_each_model_folder_resolves_to_its_backbones_defaults(tiny_sd, tiny_sd3, tiny_flux, tiny_sdxl):
    from dpo_diff.world import RECOMMENDED_GUIDANCE, RECOMMENDED_STEPS, generator_path

    attack = space_from_substitutes(PROMPT, {"dog": ["hound"]}, {})
    improve = space_from_substitutes(PROMPT, {}, {"red": ["blue"]})
    for model, want_attack, want_improve in [(tiny_sd, (50, 7.5), (50, 7.5)), (tiny_sdxl, (50, 5.0), (50, 5.0)),
                                             (tiny_sd3, (28, 7.0), (28, 7.0)), (tiny_flux, (28, 1.0), (28, 4.0))]:
        for task, space, want in (("attack", attack, want_attack), ("improve", improve, want_improve)):
            cfg = OptimizeConfig(prompt=PROMPT, task=task, model=model, steps=None, guidance=None)
            resolve_sampling(cfg, space)
            assert (cfg.steps, cfg.guidance) == want, (model, space.slots[0].target)
    # the shapes world's generator is an SD 1.x folder: its defaults are the world's recommended ones (the demo)
    assert pipeline_defaults(str(generator_path()), negative=True) == (RECOMMENDED_STEPS, RECOMMENDED_GUIDANCE)
    given = OptimizeConfig(prompt=PROMPT, model=tiny_flux, steps=None, guidance=2.0)
    resolve_sampling(given, improve)
    assert (given.steps, given.guidance) == (28, 2.0)  # a value given stays
    with pytest.raises(ValueError, match="k \\+ grad_steps"):  # resolved values are checked as given ones are
        resolve_sampling(OptimizeConfig(prompt=PROMPT, task="attack", model=tiny_flux, steps=None, guidance=None,
                                        method="gpo", gpo={"k_schedule": "fixed-60"}), attack)


def test_a_flux_attack_runs_without_true_cfg_by_default(space_file, tiny_clip, tiny_flux, tmp_path):
    out = tmp_path / "run"
    argv = ["optimize", "--prompt", PROMPT, "--space", space_file, "--model", tiny_flux, "--judge", tiny_clip,
            "--task", "attack", "--method", "random", "--steps", "4", "--budget", "2", "--seeds", "0",
            "--report-seeds", "5", "--rerank-top", "0", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["guidance"], config["steps"]) == (1.0, 4)


def test_bench_takes_the_same_defaults(tiny_flux, tmp_path):
    from dpo_diff.commands import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = str(tmp_path / "out")  # bench probes the folder's lock: never the working directory
    base = ["--prompts", "p.txt", "--model", tiny_flux, "--out", out]
    for task, guidance in (("attack", 1.0), ("improve", 4.0)):
        cfg = bench.config_from_args(parser.parse_args(base + ["--task", task]))
        assert (cfg.steps, cfg.guidance) == (28, guidance)
    world = bench.config_from_args(parser.parse_args(["--prompts", "p.txt", "--world", "--out", out]))
    assert (world.steps, world.guidance) == (50, 7.5)
