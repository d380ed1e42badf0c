"""Sparse-first search: the proposal object every sampler takes, and greedy/beam search over single edits."""

import dataclasses
import random
import statistics
import threading

import pytest
import torch

from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.search.api import search
from dpo_diff.search.base import Evaluation
from dpo_diff.search.gradient import GradientSearchConfig
from dpo_diff.search.greedy import GreedyConfig, single_changes, stratified
from dpo_diff.search.model_based import TPEConfig
from dpo_diff.search.proposal import UNIFORM, Proposal, num_changed
from dpo_diff.search.selection import SelectionConfig
from dpo_diff.space import space_from_substitutes
from dpo_diff.testing import SyntheticProblem, synthetic_space

SAMPLERS = ("random", "epo", "hybrid", "tpe", "mf")


def _old_distinct_random(sizes, n, rng):
    """The uniform draws as written before the proposal object existed (registered results depend on them)."""
    total = 1
    for s in sizes:
        total *= s
    out, seen = [], set()
    for _ in range(50 * max(n, 1)):
        if len(out) >= n or len(seen) >= total:
            break
        c = tuple(rng.randrange(s) for s in sizes)
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


@pytest.mark.parametrize("sizes", [(4, 5, 6, 2), (2, 2), (1, 3)])
def test_the_uniform_proposal_draws_exactly_what_random_search_drew_before(sizes):
    assert UNIFORM.distinct(sizes, 7, random.Random(3)) == _old_distinct_random(sizes, 7, random.Random(3))


def test_sparse_draws_change_few_slots_with_the_asked_mean_and_never_return_the_user_prompt():
    rng = random.Random(0)
    sizes = (5,) * 12
    for mean in (1.0, 2.0, 3.0):
        draws = [Proposal("sparse", mean).sample(sizes, rng) for _ in range(4000)]
        ks = [num_changed(c) for c in draws]
        assert min(ks) >= 1 and statistics.mean(ks) == pytest.approx(mean, abs=0.1)
    uniform = [num_changed(UNIFORM.sample(sizes, rng)) for _ in range(2000)]
    assert statistics.mean(uniform) == pytest.approx(12 * 4 / 5, abs=0.2)  # dense: what the issue measured


def test_sparse_distinct_exhausts_a_small_space_without_the_user_prompt():
    got = Proposal("sparse", 5).distinct((2, 3), 100, random.Random(1))
    assert sorted(got) == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert Proposal("sparse").distinct((2, 3), 10, random.Random(1), exclude={(0, 1), (0, 0)}) and \
        (0, 1) not in Proposal("sparse").distinct((2, 3), 10, random.Random(1), exclude={(0, 1)})
    assert Proposal("sparse").distinct((1, 1), 5, random.Random(1)) == []


def test_sparse_mutation_adds_drops_or_swaps_exactly_one_change():
    rng = random.Random(2)
    sizes = (4, 4, 4, 4, 2)
    parent = (0, 2, 0, 3, 0)
    moves = set()
    for _ in range(300):
        child = Proposal("sparse").mutate(parent, sizes, 0.1, rng)
        diff = [i for i in range(5) if child[i] != parent[i]]
        assert len(diff) == 1
        moves.add("add" if parent[diff[0]] == 0 else "drop" if child[diff[0]] == 0 else "swap")
    assert moves == {"add", "drop", "swap"}


def test_proposal_is_validated():
    with pytest.raises(ValueError, match="unknown proposal 'dense'"):
        Proposal("dense")
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mean_changes"):
            Proposal("sparse", bad)


def _settings(method):
    if method == "hybrid":  # GPO skipped: EPO's first population is the proposal's (else GPO's samples)
        return {"gpo": GradientSearchConfig(min_iterations=10_000)}
    return {"tpe": TPEConfig(ladder=("full",), startup=10)} if method == "tpe" else {}


@pytest.mark.parametrize("method", SAMPLERS)
def test_every_sampler_draws_sparse_edits_under_the_sparse_proposal(method):
    """At equal budget the sparse proposal's candidates change about 2 of 10 slots, the uniform one's about 8."""
    means = {}
    for kind in ("uniform", "sparse"):
        problem = SyntheticProblem(synthetic_space(10, 6), seed=4, steps=20)
        result = search(problem, method=method, budget=40, seed=0, proposal=Proposal(kind), **_settings(method))
        assert result.cost == pytest.approx(40, abs=1.0)
        drawn = [e for e in result.evaluations + result.previews
                 if e.source in ("random", "init", "screen", "tpe", "tpe-screen")]
        assert drawn
        means[kind] = statistics.mean(num_changed(e.candidate) for e in drawn)
    assert means["sparse"] < 3.5 < 6 < means["uniform"]


def test_the_uniform_proposal_is_the_default_and_changes_nothing():
    a = search(SyntheticProblem(synthetic_space(8, 5), seed=2), method="epo", budget=30, seed=1)
    b = search(SyntheticProblem(synthetic_space(8, 5), seed=2), method="epo", budget=30, seed=1, proposal=UNIFORM)
    assert [e.candidate for e in a.evaluations] == [e.candidate for e in b.evaluations]
    assert "proposal" not in a.extra


# ---------------------------------------------------------------------------------------------------- greedy
def _two_change_optimum(num_slots=6, options=5):
    """Costs where exactly two single changes help (slots 1 and 4), each on its own and together."""
    costs = torch.full((num_slots, options), 0.05)
    costs[:, 0] = 0.0
    costs[1, 3], costs[4, 2] = -0.10, -0.06
    return costs


def test_greedy_scores_every_single_then_combines_the_helpful_ones():
    problem = SyntheticProblem(synthetic_space(6, 5, target="negative"), costs=_two_change_optimum(), noise=0.0)
    result = search(problem, method="greedy", budget=40, seed=0)
    singles = set(single_changes(problem.space.sizes))
    scored = {e.candidate for e in result.evaluations}
    assert singles <= scored and problem.space.default in scored
    assert result.best.candidate == (0, 3, 0, 0, 2, 0)
    assert result.extra["rounds"] >= 1 and result.cost <= 40
    assert all(num_changed(c) <= 2 for c in scored)  # nothing dense was ever tried


def test_greedy_samples_singles_stratified_when_they_do_not_fit():
    problem = SyntheticProblem(synthetic_space(10, 6), seed=3)
    result = search(problem, method="greedy", budget=20, seed=0)
    singles = [e.candidate for e in result.evaluations if num_changed(e.candidate) == 1]
    slots = {next(i for i, x in enumerate(c) if x) for c in singles}
    assert len(singles) >= 10 and slots == set(range(10))  # every slot looked at before any twice
    assert result.cost <= 20 + 1e-9


def test_stratified_order_visits_every_slot_once_per_round():
    order = stratified(single_changes((3, 3, 2, 3)), random.Random(0))
    first = [next(i for i, x in enumerate(c) if x) for c in order[:4]]
    assert sorted(first) == [0, 1, 2, 3] and len(order) == 7


def test_greedy_screens_singles_at_a_cheap_fidelity_and_promotes_the_best():
    problem = SyntheticProblem(synthetic_space(10, 6), seed=5, steps=20, preview_noise=0.0)
    result = search(problem, method="greedy", budget=20, seed=0, greedy=GreedyConfig(screen="steps:2"))
    assert result.extra["screened"] == "steps:2" and len(result.previews) >= 40
    full_singles = [e for e in result.evaluations if num_changed(e.candidate) == 1]
    best_looks = sorted(result.previews, key=lambda e: e.objective)[: len(full_singles)]
    assert {e.candidate for e in full_singles} == {e.candidate for e in best_looks}
    assert result.cost <= 20 + 1e-9


def test_beam_search_keeps_several_states_and_respects_max_changes():
    costs = torch.full((6, 4), -0.01)
    costs[:, 0] = 0.0  # every change helps a little: greedy would keep adding
    problem = SyntheticProblem(synthetic_space(6, 4), costs=costs, noise=0.0)
    result = search(problem, method="greedy", budget=60, seed=0, greedy=GreedyConfig(beam=3, max_changes=2))
    assert max(num_changed(e.candidate) for e in result.evaluations) == 2
    wider = search(SyntheticProblem(synthetic_space(6, 4), costs=costs, noise=0.0), method="greedy", budget=60,
                   seed=0, greedy=GreedyConfig(beam=3, expand=6))
    assert num_changed(wider.best.candidate) >= 3


def test_greedy_batched_equals_one_at_a_time_and_the_same_seed_gives_the_same_answer():
    runs = []
    for batch in (8, 1, 8):
        problem = SyntheticProblem(synthetic_space(8, 5), seed=6)
        problem.sampling = dataclasses.replace(problem.sampling, batch_size=batch)
        runs.append(search(problem, method="greedy", budget=30, seed=2))
    assert [e.candidate for e in runs[0].evaluations] == [e.candidate for e in runs[1].evaluations] == \
        [e.candidate for e in runs[2].evaluations]


def test_a_resumed_greedy_run_equals_an_uninterrupted_one():
    full = search(SyntheticProblem(synthetic_space(8, 5), seed=7), method="greedy", budget=30, seed=0,
                  selection=SelectionConfig(rerank_top=4))
    half = {e.candidate: Evaluation.from_dict(e.to_dict()) for e in full.evaluations[: len(full.evaluations) // 2]}
    problem = SyntheticProblem(synthetic_space(8, 5), seed=7)
    resumed = search(problem, method="greedy", budget=30, seed=0, preloaded=half,
                     selection=SelectionConfig(rerank_top=4))
    assert [e.candidate for e in resumed.evaluations] == [e.candidate for e in full.evaluations]
    assert resumed.best.candidate == full.best.candidate and resumed.cost == pytest.approx(full.cost)
    assert problem.calls < sum(len(e.losses) for e in full.evaluations) + 8  # the preloaded half was not redone


def test_greedy_stops_on_cancel_and_skips_what_the_meaning_constraint_rejects():
    stop = threading.Event()
    problem = SyntheticProblem(synthetic_space(8, 5), seed=8)
    calls = []

    def on_eval(ev):
        calls.append(ev)
        if len(calls) == 9:
            stop.set()

    result = search(problem, method="greedy", budget=40, seed=0, on_evaluation=on_eval, should_stop=stop.is_set)
    assert result.extra.get("cancelled") and len(result.evaluations) <= 16
    constraint = lambda user, prompts: ["w2x" not in p for p in prompts]  # noqa: E731
    problem = SyntheticProblem(synthetic_space(8, 5), seed=8, constraint=constraint)
    result = search(problem, method="greedy", budget=40, seed=0)
    assert result.rejected and all(c[2] == 0 for c in (e.candidate for e in result.evaluations))


def test_greedy_config_is_validated():
    for kwargs, match in (({"beam": 0}, "beam"), ({"expand": 0}, "expand"), ({"max_changes": -1}, "max_changes"),
                          ({"singles_share": 0}, "singles_share"), ({"screen": "full"}, "cheaper fidelity")):
        with pytest.raises(ValueError, match=match):
            GreedyConfig(**kwargs)


def test_greedy_on_the_tiny_model_batched_equals_one_at_a_time(backend, judge):
    space = space_from_substitutes("a red dog on the grass", None,
                                   {"red": ["blue", "green", "pink"], "grass": ["sand", "snow", "mud"]})
    results = []
    for bs in (16, 1):
        problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=4, batch_size=bs))
        results.append(search(problem, method="greedy", budget=7, seeds=(0,), seed=0, proposal=Proposal("sparse")))
    a, b = results
    assert [e.candidate for e in a.evaluations] == [e.candidate for e in b.evaluations]
    assert all(num_changed(e.candidate) <= 2 for e in a.evaluations)
    torch.testing.assert_close(torch.tensor([e.losses for e in a.evaluations]),
                               torch.tensor([e.losses for e in b.evaluations]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["random", "epo", "tpe", "mf"])
def test_sparse_samplers_resume_exactly_and_respect_the_meaning_constraint(method):
    sparse = Proposal("sparse")
    full = search(SyntheticProblem(synthetic_space(8, 5), seed=9, steps=20), method=method, budget=30, seed=0,
                  proposal=sparse, **_settings(method))
    half = {e.key: Evaluation.from_dict(e.to_dict())
            for e in (full.evaluations + full.previews)[: (len(full.evaluations) + len(full.previews)) // 2]}
    resumed = search(SyntheticProblem(synthetic_space(8, 5), seed=9, steps=20), method=method, budget=30, seed=0,
                     proposal=sparse, preloaded=half, **_settings(method))
    assert [e.candidate for e in resumed.evaluations] == [e.candidate for e in full.evaluations]
    constraint = lambda user, prompts: ["w3x" not in p for p in prompts]  # noqa: E731
    problem = SyntheticProblem(synthetic_space(8, 5), seed=9, steps=20, constraint=constraint)
    result = search(problem, method=method, budget=30, seed=0, proposal=sparse, **_settings(method))
    assert result.rejected and all(e.candidate[3] == 0 for e in result.evaluations + result.previews)
