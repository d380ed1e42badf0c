"""The multi-fidelity (mf) and model-based (tpe) searches: equal budget, anytime, deterministic, resumable."""

import pytest
import torch

from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.search.api import search
from dpo_diff.search.base import Evaluator
from dpo_diff.search.model_based import TPEConfig
from dpo_diff.search.multi_fidelity import MultiFidelityConfig
from dpo_diff.space import space_from_substitutes
from dpo_diff.testing import SyntheticProblem, synthetic_space

METHODS = ("mf", "tpe")


def settings(method: str) -> dict:
    return {"tpe": TPEConfig(ladder=("steps:2", "full"))} if method == "tpe" else {}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [3, 10, 40])
def test_equal_budget_and_every_score_charged(method, budget):
    problem = SyntheticProblem(synthetic_space(6, 5), steps=20)
    result = search(problem, method=method, budget=budget, seeds=(0, 1), seed=1, **settings(method))
    assert result.cost <= budget + 1e-9
    charged = sum(2 for _ in result.evaluations) + sum(
        Evaluator(problem, (0, 1), budget=100).cost_of(p.fidelity) for p in result.previews)
    assert charged == pytest.approx(result.cost)
    assert result.best.fidelity == "full" and result.best in result.evaluations
    assert problem.fidelity_calls.get("full", 0) == 2 * len(result.evaluations)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_answer(method):
    runs = [search(SyntheticProblem(synthetic_space(6, 5), steps=20), method=method, budget=30, seeds=(0,), seed=3,
                   **settings(method)) for _ in range(2)]
    assert [e.candidate for e in runs[0].evaluations] == [e.candidate for e in runs[1].evaluations]
    assert [e.candidate for e in runs[0].previews] == [e.candidate for e in runs[1].previews]


def test_mf_is_anytime_and_promotes_the_best_looks():
    problem = SyntheticProblem(synthetic_space(8, 6), steps=20, preview_noise=0.0)
    result = search(problem, method="mf", budget=40, seeds=(0,), seed=0,
                    mf=MultiFidelityConfig(ladder=("shortcut:5", "full"), rounds=4))
    first_full = min(e.cost for e in result.evaluations)
    assert first_full <= 0.25 * 40  # a real (full) best-so-far within the first round
    looks = sorted(result.previews, key=lambda e: e.objective)
    promoted = {e.candidate for e in result.evaluations}
    assert looks[0].candidate in promoted  # with exact looks the best look is always promoted
    assert result.extra["looks"]["shortcut:5"] == len(result.previews) > len(result.evaluations)


def test_mf_beats_random_when_looks_are_informative():
    """On a synthetic problem with cheap, exact looks, screening many candidates must find better ones than random
    search at the same budget (the reason the method exists); averaged over 8 root seeds."""
    gaps = {"mf": [], "random": []}
    for root in range(8):
        for method in gaps:
            problem = SyntheticProblem(synthetic_space(8, 6), seed=root, steps=20, preview_noise=0.0)
            result = search(problem, method=method, budget=30, seeds=(0,), seed=root,
                            mf=MultiFidelityConfig(ladder=("steps:1", "full"), screen_share=0.8))
            gaps[method].append(result.best.objective)
    assert all(m <= r for m, r in zip(gaps["mf"], gaps["random"])) or sum(gaps["mf"]) < sum(gaps["random"]) - 0.2


def test_mf_falls_back_to_random_search_below_a_useful_screen():
    problem = SyntheticProblem(synthetic_space(4, 4), steps=20)
    result = search(problem, method="mf", budget=2, seeds=(0,), seed=0)
    assert "random search instead" in result.extra["mf_skipped"] and not result.previews
    assert result.method == "mf" and result.cost <= 2


def test_mf_and_tpe_respect_the_meaning_constraint_at_every_fidelity():
    space = synthetic_space(5, 4)
    banned = {p for p in ("w0x1",)}
    constraint = lambda user, prompts: [not any(b in p.split() for b in banned) for p in prompts]  # noqa: E731
    for method in METHODS:
        problem = SyntheticProblem(space, "attack", steps=20, constraint=constraint)
        result = search(problem, method=method, budget=20, seeds=(0,), seed=0, **settings(method))
        scored = [e.candidate for e in result.evaluations + result.previews]
        assert scored and all(c[0] != 1 for c in scored)


def test_tpe_tells_optuna_every_trial_and_beats_chance_on_a_separable_problem():
    wins = 0
    for root in range(6):
        best = {}
        for method in ("tpe", "random"):
            problem = SyntheticProblem(synthetic_space(6, 6), seed=root, steps=20)
            best[method] = search(problem, method=method, budget=40, seeds=(0,), seed=root).best.objective
        wins += best["tpe"] <= best["random"]
    assert wins >= 4


def test_tpe_config_is_validated():
    with pytest.raises(ValueError, match="at most one cheap rung"):
        TPEConfig(ladder=("steps:2", "steps:4", "full"))
    with pytest.raises(ValueError, match="keep must be in"):
        TPEConfig(keep=0)
    with pytest.raises(ValueError, match="screen_share"):
        MultiFidelityConfig(screen_share=1.5)


def test_mf_on_the_tiny_model_batched_equals_one_at_a_time(backend, judge):
    space = space_from_substitutes("a red dog on the grass", {"dog": ["hound", "puppy"]},
                                   {"red": ["blue", "green", "pink"], "grass": ["sand", "snow", "mud"]})
    results = []
    for bs in (16, 1):
        problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=4, batch_size=bs))
        results.append(search(problem, method="mf", budget=6, seeds=(0,), seed=0,
                              mf=MultiFidelityConfig(ladder=("shortcut:1", "full"), min_screen=2)))
    a, b = results
    assert [e.candidate for e in a.previews] == [e.candidate for e in b.previews]
    assert [e.candidate for e in a.evaluations] == [e.candidate for e in b.evaluations]
    torch.testing.assert_close(torch.tensor([e.losses for e in a.previews]),
                               torch.tensor([e.losses for e in b.previews]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_a_spent_time_budget_stops_after_the_first_full_evaluation(method):
    problem = SyntheticProblem(synthetic_space(6, 5), steps=20)
    result = search(problem, method=method, budget=200, seeds=(0,), seed=0, time_budget=1e-9, **settings(method))
    assert result.evaluations and result.best.fidelity == "full"  # an answer, however short the time
    first_full = min(e.cost for e in result.evaluations)
    assert result.cost == pytest.approx(max(e.cost for e in result.evaluations + result.previews))
    assert result.cost <= first_full + 8  # nothing after the batch that produced the first full evaluation
