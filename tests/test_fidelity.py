"""Fidelity as part of the problem: parsing, the one cost rule, previews on the tiny SD model, resume."""

import json

import pytest
import torch

from dpo_diff.fidelity import Fidelity, check_ladder, parse_ladder
from dpo_diff.optimize import OptimizeConfig, optimize
from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.search.base import BudgetExhausted, Evaluator
from dpo_diff.space import space_from_substitutes
from dpo_diff.testing import SyntheticProblem, synthetic_space

SPACE = space_from_substitutes("a red dog on the grass", {"dog": ["hound", "puppy"]},
                               {"red": ["blue", "green"], "grass": ["sand", "snow"]})


def test_parse_specs_percentages_and_errors():
    assert Fidelity.parse("full").is_full
    assert Fidelity.parse("shortcut:6@1") == Fidelity("shortcut", 6, 1)
    assert Fidelity.parse("steps:20%", steps=20) == Fidelity("steps", 4)
    assert Fidelity.parse("steps:1%", steps=20).level == 1  # a generation has at least one step
    assert Fidelity.parse("shortcut:30%", steps=50).name == "shortcut:15"
    with pytest.raises(ValueError, match="use full, steps:N or shortcut:K"):
        Fidelity.parse("fast")
    with pytest.raises(ValueError, match="share of the sampling steps"):
        Fidelity.parse("steps:10%")
    with pytest.raises(ValueError, match="K <= steps - 1 = 9"):
        check_ladder("shortcut:10", 10)
    assert [f.name for f in parse_ladder("steps:2,shortcut:4")] == ["steps:2", "shortcut:4", "full"]
    with pytest.raises(ValueError, match="before its last rung"):
        parse_ladder("full,steps:2")


def test_costs_are_charged_exactly_in_full_generation_equivalents():
    problem = SyntheticProblem(synthetic_space(3, 4), steps=20)
    ev = Evaluator(problem, (0, 1), budget=10)
    assert ev.cost_of("full") == 2
    assert ev.cost_of("steps:5") == pytest.approx(2 * 5 / 20)
    assert ev.cost_of("shortcut:6") == pytest.approx(2 * 7 / 20)  # K no-grad calls plus the jump's call
    assert ev.cost_of("full@1") == 1 and ev.cost_of("steps:5@1") == pytest.approx(5 / 20)
    assert ev.cost_of("steps:20") == 2 and ev.cost_of("full@2") == 2  # settings that change nothing are dropped
    cands = [(i, j, 0) for i in range(4) for j in range(4)]
    ev.evaluate(cands[:4], fidelity="shortcut:6")
    assert ev.cost == pytest.approx(4 * 0.7) and not ev.evaluations and len(ev.previews) == 4
    ev.evaluate(cands[:2])
    assert ev.cost == pytest.approx(2.8 + 4) and ev.best.fidelity == "full"
    ev.evaluate(cands[:4], fidelity="shortcut:6")  # cached: free
    assert ev.cost == pytest.approx(6.8)
    with pytest.raises(BudgetExhausted):
        ev.evaluate(cands[4:], fidelity="shortcut:6")
    assert ev.cost <= 10 + 1e-9 and ev.remaining < 0.7
    assert problem.fidelity_calls == {"shortcut:6": 2 * (4 + 4), "full": 4}


def test_a_preview_never_becomes_the_answer():
    problem = SyntheticProblem(synthetic_space(3, 4), steps=20)
    ev = Evaluator(problem, (0,), budget=10)
    ev.evaluate([(1, 1, 1)], fidelity="steps:2")
    assert ev.best is None
    ev.evaluate([(2, 2, 2)])
    assert ev.best.candidate == (2, 2, 2)


@pytest.fixture(scope="module")
def tiny_problem(backend, judge):
    return Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=6, batch_size=16))


def test_a_few_step_generation_at_full_steps_is_the_full_sampler(tiny_problem):
    cands = [(0, 0, 0), (1, 2, 0), (2, 1, 2)]
    full = tiny_problem.candidate_losses(cands, (0, 3))
    torch.testing.assert_close(tiny_problem.candidate_losses(cands, (0, 3), "steps:6"), full)
    few = tiny_problem.candidate_losses(cands, (0, 3), "steps:2")
    assert few.shape == full.shape and not torch.allclose(few, full)
    one_seed = tiny_problem.candidate_losses(cands, (0, 3), "full@1")
    torch.testing.assert_close(one_seed, full[:, :1])


def test_shortcut_preview_is_the_relaxed_loss_at_the_corner_and_batches_exactly(tiny_problem, backend, judge):
    from dpo_diff.relax import WordMixture

    cands = [(0, 0, 0), (1, 2, 0), (2, 1, 2), (0, 2, 1)]
    got = tiny_problem.candidate_losses(cands, (0, 3), "shortcut:2")
    relaxed = tiny_problem.relaxation()
    mix = WordMixture(SPACE.sizes)
    with torch.no_grad():
        want = torch.stack([relaxed(mix.one_hot(c), [0, 3], start_step=2, grad_steps=1) for c in cands])
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)
    single = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=6, batch_size=1))
    torch.testing.assert_close(single.candidate_losses(cands, (0, 3), "shortcut:2"), got, atol=1e-5, rtol=1e-5)


def test_calls_follow_the_scheduler_layout(backend, judge):
    """Cost counts denoiser calls as the scheduler lays them out, not nominal steps."""
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    problem = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=10))
    assert problem.calls_for() == 10 and problem.calls_for(3) == 3
    pndm = StableDiffusionBackend(backend.tokenizer, backend.text_encoder, backend.unet, backend.vae,
                                  _pndm_scheduler(backend), scheduler_name="model")
    p2 = Problem(SPACE, Task("improve"), pndm, judge, SamplingConfig(steps=10))
    calls = len(pndm.new_scheduler(10).timesteps)
    assert p2.calls_for() == calls != 10
    assert Evaluator(p2, (0,), budget=50).cost_of("steps:5") == pytest.approx(len(pndm.new_scheduler(5).timesteps)
                                                                              / calls)


def _pndm_scheduler(backend):
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(backend.new_scheduler().config, skip_prk_steps=False)


def test_resume_keeps_fidelities_and_equals_the_uninterrupted_run(backend, judge, tmp_path):
    cfg = dict(task="improve", method="mf", budget=6, seeds=(0,), report_seeds=(7,), steps=4, batch_size=8,
               mf={"ladder": ["steps:1", "full"], "screen_share": 0.5, "rounds": 2, "min_screen": 2, "chunk": 4})
    full = optimize(OptimizeConfig(out=str(tmp_path / "full"), **cfg), space=SPACE, backend=backend, judge=judge,
                    progress=False)
    lines = (tmp_path / "full" / "progress.jsonl").read_text().splitlines()
    fidelities = [json.loads(line)["fidelity"] for line in lines]
    assert "steps:1" in fidelities and "full" in fidelities
    run = tmp_path / "crashed"
    run.mkdir()
    cut = fidelities.index("full") + 1  # killed after the first full evaluation, previews before it kept
    (run / "progress.jsonl").write_text("\n".join(lines[:cut]) + "\n")
    (run / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    resumed = optimize(OptimizeConfig(out=str(run), **cfg), space=SPACE, backend=backend, judge=judge,
                       progress=False, resume=True)
    assert resumed["best"] == full["best"] and resumed["cost"] == full["cost"]
    again = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert [(r["candidate"], r["fidelity"]) for r in again] == [
        (json.loads(line)["candidate"], f) for line, f in zip(lines, fidelities)]
    search = json.loads((run / "search.json").read_text())
    assert search["previews"] and all(p["fidelity"] == "steps:1" for p in search["previews"])
    best = json.loads((run / "best.json").read_text())
    assert best["fidelity"] == "full"
