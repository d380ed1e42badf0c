"""GPO's k and its budget charge count denoiser calls (issue #20, item 7): Heun makes 2n - 1 calls for n steps and
PNDM n + 9, so a charge per step was about 2x off there. The charge must equal the calls the denoiser really made,
counted by a hook on the UNet / transformer, over those of one full generation."""

from __future__ import annotations

import pytest
import torch

from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.search.base import Evaluator
from dpo_diff.search.cost import generation_calls, shortcut_cost
from dpo_diff.search.gradient import GradientSearchConfig, train_mixture
from dpo_diff.space import space_from_substitutes

SPACE = space_from_substitutes("a red dog on the grass", {"dog": ["cat"]}, {"red": ["blue"]})


def count_rows(module: torch.nn.Module) -> list[int]:
    """Image rows through ``module`` per call, appended as it runs (CFG's doubled rows are halved)."""
    rows: list[int] = []

    def hook(mod, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        rows.append(x.shape[0])

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return rows


def measured_charge(backend, denoiser, judge, steps: int, task: str):
    """(what GPO charged for one iteration, denoiser calls of that iteration / those of one full generation)."""
    problem = Problem(SPACE, Task(task), backend, judge, SamplingConfig(steps=steps, guidance_scale=3.0))
    rows = count_rows(denoiser)
    backend.generate(["a red dog"], ["blurry"], [0], steps=steps, guidance_scale=3.0)
    full, rows[:] = sum(rows), []
    ev = Evaluator(problem, (0, 1), budget=20)
    config = GradientSearchConfig(iterations=1, samples=2, budget_share=None, min_iterations=1, score_every=0)
    state = train_mixture(problem, ev, config, seed=0)
    assert len(state.log) == 1
    return ev.cost, sum(rows) / full, state.log[0]["k"], full


def test_pndm_charge_is_the_calls_made(tiny_sd, judge):
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    backend = StableDiffusionBackend.from_pretrained(tiny_sd, scheduler="pndm")
    charged, measured, k, full = measured_charge(backend, backend.unet, judge, 10, "improve")
    assert full == 2 * 19  # 10 PNDM steps: 12 Runge-Kutta calls + 7 PLMS ones, each with CFG's 2 rows
    assert k == round(15 * 19 / 50)  # step-15-2 is written for 50 calls
    assert charged == pytest.approx(measured) and charged == pytest.approx(2 * 2 * (k + 1) / 19)


def test_flow_heun_charge_is_the_calls_made(tiny_sd3, judge):
    from dpo_diff.backends.sd3 import StableDiffusion3Backend

    backend = StableDiffusion3Backend.from_pretrained(tiny_sd3, scheduler="heun")
    charged, measured, k, full = measured_charge(backend, backend.transformer, judge, 6, "attack")
    assert full == 2 * (2 * 6 - 1)  # Heun: two calls per step but the last; CFG: 2 rows each
    assert k == round(15 * 11 / 50) and charged == pytest.approx(measured)


def test_the_cost_rule():
    assert shortcut_cost(15, 1, 50) == pytest.approx(0.32) and shortcut_cost(3, 1, 11) == pytest.approx(4 / 11)
    with pytest.raises(ValueError, match="full_calls=0"):
        shortcut_cost(1, 1, 0)

    class Stepless:  # a problem without a backend counts one call per step
        sampling = SamplingConfig(steps=7)

    assert generation_calls(Stepless()) == 7
