"""Searches on synthetic problems whose optimum is known (no diffusion model needed)."""

import pytest
import torch

from dpo_diff.search.api import search
from dpo_diff.search.base import Evaluation, NothingToSearch
from dpo_diff.search.evolution import EvolutionSearchConfig, crossover, mutate
from dpo_diff.search.gradient import GradientSearchConfig
from dpo_diff.seeding import rng
from dpo_diff.space import SearchSpace
from dpo_diff.testing import SyntheticProblem, synthetic_space

METHODS = ["hybrid", "gpo", "epo", "random"]


@pytest.mark.parametrize("task", ["improve", "attack"])
@pytest.mark.parametrize("method", METHODS)
def test_each_search_finds_the_known_optimum_of_a_small_problem(method, task):
    problem = SyntheticProblem(synthetic_space(3, 3), task, seed=1)
    result = search(problem, method=method, budget=40, seeds=(0,), seed=0)
    assert result.best.candidate == problem.optimum()
    assert result.cost <= 40 + 1e-9


def test_hybrid_beats_random_at_equal_budget():
    wins, gaps = 0, []
    for s in range(6):
        problem_h = SyntheticProblem(synthetic_space(10, 6), seed=100 + s)
        problem_r = SyntheticProblem(synthetic_space(10, 6), seed=100 + s)
        h = search(problem_h, method="hybrid", budget=40, seed=s)
        r = search(problem_r, method="random", budget=40, seed=s)
        wins += h.best.objective < r.best.objective
        gaps.append(r.best.objective - h.best.objective)
    assert wins >= 5, gaps
    assert sum(gaps) / len(gaps) > 0


@pytest.mark.parametrize("method", METHODS)
def test_budget_is_never_exceeded_and_duplicates_never_reevaluated(method):
    problem = SyntheticProblem(synthetic_space(6, 4), seed=3)
    result = search(problem, method=method, budget=23, seeds=(0, 1), seed=0)
    assert result.cost <= 23 + 1e-9
    cands = [e.candidate for e in result.evaluations]
    assert len(cands) == len(set(cands))
    assert problem.calls == 2 * len(cands)  # every exact evaluation was charged
    costs = [c for c, _ in result.history]
    assert costs == sorted(costs)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_result(method):
    a = search(SyntheticProblem(synthetic_space(6, 4), seed=3), method=method, budget=20, seed=7)
    b = search(SyntheticProblem(synthetic_space(6, 4), seed=3), method=method, budget=20, seed=7)
    assert [e.candidate for e in a.evaluations] == [e.candidate for e in b.evaluations]
    c = search(SyntheticProblem(synthetic_space(6, 4), seed=3), method=method, budget=20, seed=8)
    assert [e.candidate for e in a.evaluations] != [e.candidate for e in c.evaluations]


@pytest.mark.parametrize("gpo", [GradientSearchConfig(),
                                 GradientSearchConfig.preset("paper", lr=0.3, grad_clip=1.0)], ids=["robust", "paper"])
def test_hybrid_initial_population_follows_the_learned_logits(gpo):
    problem = SyntheticProblem(synthetic_space(8, 5), seed=4)
    result = search(problem, method="hybrid", budget=40, gpo=gpo, seed=0)
    init = [tuple(c) for c in result.extra["initial_population"]]
    logits = torch.tensor(result.extra["logits"])
    argmax = tuple(int(i) for i in logits.argmax(-1))
    assert init[0] == argmax and argmax != problem.space.default
    # Genes of the initial population agree with the learned argmax far more often than uniform sampling would (1/5)
    agree = sum(c[i] == argmax[i] for c in init for i in range(8)) / (len(init) * 8)
    assert agree > 0.5, agree
    # ...and the learned argmax is close to the true optimum
    opt = problem.optimum()
    assert sum(a == o for a, o in zip(argmax, opt)) >= 6


def test_resumed_search_equals_an_uninterrupted_one():
    full = search(SyntheticProblem(synthetic_space(6, 4), seed=3), method="hybrid", budget=30, seed=2)
    saved: list[Evaluation] = []

    class Crash(Exception):
        pass

    def on_eval(ev):
        saved.append(ev)
        if len(saved) == 9:
            raise Crash

    with pytest.raises(Crash):
        search(SyntheticProblem(synthetic_space(6, 4), seed=3), method="hybrid", budget=30, seed=2,
               on_evaluation=on_eval)
    problem = SyntheticProblem(synthetic_space(6, 4), seed=3)
    resumed = search(problem, method="hybrid", budget=30, seed=2, preloaded={e.candidate: e for e in saved})
    assert [e.candidate for e in resumed.evaluations] == [e.candidate for e in full.evaluations]
    assert resumed.best.candidate == full.best.candidate and resumed.cost == pytest.approx(full.cost)
    assert problem.calls == len(full.evaluations) - 9  # the 9 finished evaluations were not generated again


def test_constraint_rejections_cost_nothing_and_all_rejected_is_explained():
    space = synthetic_space(4, 3)
    only_x1 = lambda user, prompts: ["x2" not in p for p in prompts]  # noqa: E731
    problem = SyntheticProblem(space, seed=5, constraint=only_x1)
    result = search(problem, method="random", budget=40, seed=0)
    assert all("x2" not in e.prompt for e in result.evaluations)
    assert len(result.evaluations) == 2**4 and result.cost == 16  # all allowed candidates, rejections free
    assert result.rejected
    nothing = SyntheticProblem(space, seed=5, constraint=lambda u, ps: [False] * len(ps))
    with pytest.raises(ValueError, match="rejected by the meaning constraint"):
        search(nothing, method="epo", budget=10, seed=0)


def test_bad_budgets_and_trivial_spaces():
    problem = SyntheticProblem(synthetic_space(3, 3))
    with pytest.raises(ValueError, match="positive"):
        search(problem, budget=0)
    with pytest.raises(ValueError, match="smaller than one evaluation"):
        search(problem, budget=2, seeds=(0, 1, 2))
    with pytest.raises(NothingToSearch, match="nothing to search"):
        search(SyntheticProblem(synthetic_space(3, 1)), budget=10)
    with pytest.raises(ValueError, match="unknown method"):
        search(problem, method="annealing")


def test_genetic_operators():
    r = rng(0, "t")
    sizes = (3, 1, 4, 2)
    for _ in range(50):
        child = mutate((0, 0, 0, 0), sizes, 0.1, r)
        assert child != (0, 0, 0, 0) and child[1] == 0 and all(c < s for c, s in zip(child, sizes))
        x = crossover((1, 0, 3, 1), (2, 0, 1, 0), r)
        assert all(g in pair for g, pair in zip(x, [(1, 2), (0,), (3, 1), (1, 0)]))
    with pytest.raises(ValueError, match="mutation_prob"):
        EvolutionSearchConfig(mutation_prob=0)


def test_negative_space_search():
    problem = SyntheticProblem(synthetic_space(3, 3, target="negative"), seed=9)
    assert search(problem, method="epo", budget=40).best.candidate == problem.optimum()
    assert SearchSpace("a b").is_trivial
