"""Budget-aware, anytime and seed-robust search on synthetic problems with known optima."""

import pytest
import torch

from dpo_diff.search.api import search
from dpo_diff.search.base import Evaluation
from dpo_diff.search.gradient import GradientSearchConfig, affordable_iterations
from dpo_diff.search.selection import SelectionConfig
from dpo_diff.testing import SyntheticProblem, synthetic_space


@pytest.mark.parametrize("budget", [8, 13])
def test_hybrid_at_a_small_budget_skips_gpo_and_ties_random_search(budget):
    """GPO cannot pay for its minimum steps: the hybrid runs EPO, whose first population is random search's draws,
    so below one population (20) it evaluates exactly what random search does, in the same order."""
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    result = search(problem, method="hybrid", budget=budget, seed=0)
    assert "GPO skipped" in result.extra["gpo_skipped"] and "ran EPO" in result.extra["gpo_skipped"]
    assert result.extra["gpo_log"] == [] and {e.source for e in result.evaluations} == {"init"}
    assert result.method == "hybrid" and len(result.evaluations) == budget and result.cost == pytest.approx(budget)
    rnd = search(SyntheticProblem(synthetic_space(10, 6), seed=11), method="random", budget=budget, seed=0)
    assert [e.candidate for e in result.evaluations] == [e.candidate for e in rnd.evaluations]
    assert result.best.candidate == rnd.best.candidate
    if budget != 8:
        return
    gpo = search(SyntheticProblem(synthetic_space(10, 6), seed=11), method="gpo", budget=8, seed=0)
    assert "GPO ran random search" in gpo.extra["gpo_skipped"]
    assert [e.candidate for e in gpo.evaluations] == [e.candidate for e in rnd.evaluations]


def test_hybrid_without_gpo_evolves_past_its_first_population_when_the_budget_allows():
    """GPO skipped at a budget above one population (here forced by an unaffordable minimum): evolution runs."""
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    result = search(problem, method="hybrid", budget=40, seed=0, gpo=GradientSearchConfig(min_iterations=10_000))
    assert "ran EPO" in result.extra["gpo_skipped"]
    assert any(e.source == "offspring" for e in result.evaluations)
    assert result.cost == pytest.approx(40, abs=1.0)


def test_hybrid_spends_only_its_share_on_gpo_and_the_rest_on_evolution():
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    gpo = GradientSearchConfig(budget_share=0.3, score_every=0)
    result = search(problem, method="hybrid", budget=40, seed=0, gpo=gpo)
    log = result.extra["gpo_log"]
    assert log and log[-1]["cost"] <= 0.3 * 40 + 1e-9
    assert sum(e.source in ("init", "offspring") for e in result.evaluations) >= 20
    assert result.cost == pytest.approx(40, abs=1.0)


def test_paper_preset_keeps_fixed_iterations():
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    result = search(problem, method="hybrid", budget=40, seed=0, gpo=GradientSearchConfig.preset("paper"))
    assert len(result.extra["gpo_log"]) == 20
    with pytest.raises(ValueError, match="unknown GPO preset"):
        GradientSearchConfig.preset("fast")


def test_gpo_spends_the_rest_of_the_budget_on_learned_samples():
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    result = search(problem, method="gpo", budget=30, seed=0)
    assert result.cost > 30 - 1 - 1e-9
    assert sum(e.source == "gpo-sample" for e in result.evaluations) >= 15


def test_gpo_scores_its_argmax_while_learning():
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    seen: list[tuple[int, str]] = []
    iterations: list[int] = []
    gpo = GradientSearchConfig(score_every=2, budget_share=0.5)
    search(problem, method="hybrid", budget=40, seed=0, gpo=gpo,
           on_evaluation=lambda ev: seen.append((len(iterations), ev.source)),
           on_iteration=lambda st: iterations.append(len(st.log)))
    during = [n for n, src in seen if src == "gpo-argmax"]
    assert during and during[0] < len(iterations), "no evaluated best-so-far before GPO finished"


def test_iterations_follow_the_budget_share():
    from dpo_diff.search.base import Evaluator

    problem = SyntheticProblem(synthetic_space(4, 3), seed=1)
    cfg = GradientSearchConfig(budget_share=0.5, samples=2)
    # k = 15, 15, 16, 16, ... of 50 steps: 2 samples x (k + 1) / 50 = 0.64, 0.64, 0.68, ...: 13 fit in a share of 10
    assert affordable_iterations(Evaluator(problem, (0,), 20.0), cfg, 50) == 13
    assert affordable_iterations(Evaluator(problem, (0,), 2.0), cfg, 50) == 1


def test_a_resumed_gpo_continues_from_its_checkpoint_exactly():
    full = search(SyntheticProblem(synthetic_space(6, 4), seed=3), method="hybrid", budget=40, seed=2)
    saved: list[Evaluation] = []
    ckpt: list[dict] = []

    class Crash(Exception):
        pass

    def on_iteration(state):
        ckpt[:] = [state.checkpoint()]
        if len(state.log) == 4:
            raise Crash

    with pytest.raises(Crash):
        search(SyntheticProblem(synthetic_space(6, 4), seed=3), method="hybrid", budget=40, seed=2,
               on_evaluation=saved.append, on_iteration=on_iteration)
    gradient_calls = []
    problem = SyntheticProblem(synthetic_space(6, 4), seed=3)
    relaxation = problem.relaxation
    problem.relaxation = lambda: (lambda *a, **k: (gradient_calls.append(1), relaxation()(*a, **k))[1])
    resumed = search(problem, method="hybrid", budget=40, seed=2, preloaded={e.candidate: e for e in saved},
                     gpo_resume=ckpt[0])
    assert resumed.extra["logits"] == full.extra["logits"]
    assert resumed.extra["gpo_log"] == full.extra["gpo_log"]
    assert [e.candidate for e in resumed.evaluations] == [e.candidate for e in full.evaluations]
    assert resumed.cost == pytest.approx(full.cost)
    assert len(gradient_calls) == len(full.extra["gpo_log"]) - 4  # one batched pass of every sample per iteration


class OOMAboveOneRow(SyntheticProblem):
    """The relaxed loss runs out of memory for more than one row (a big model on a small GPU)."""

    def relaxation(self):
        inner = super().relaxation()
        self.rows = []

        def loss(weights, seeds, **kw):
            self.rows.append(weights.shape[0])
            if weights.shape[0] > 1:
                raise torch.OutOfMemoryError("simulated")
            return inner(weights, seeds, **kw)

        return loss


def test_gradient_out_of_memory_backs_off_to_smaller_chunks_with_the_same_result():
    space = synthetic_space(6, 4)
    gpo = GradientSearchConfig(samples=4, sample_chunk=None, score_every=0)
    want = search(SyntheticProblem(space, seed=3), method="gpo", budget=30, seed=1, gpo=gpo)
    problem = OOMAboveOneRow(space, seed=3)
    got = search(problem, method="gpo", budget=30, seed=1, gpo=gpo)
    torch.testing.assert_close(torch.tensor(got.extra["logits"]), torch.tensor(want.extra["logits"]), atol=2e-3,
                               rtol=0)
    assert set(problem.rows[3:]) == {1}, "the chunk size that fit was not remembered"


def test_gradient_is_averaged_over_seeds_one_seed_per_pass():
    calls = []

    class Recording(SyntheticProblem):
        def relaxation(self):
            inner = super().relaxation()
            return lambda w, seeds, **kw: (calls.append(tuple(seeds)), inner(w, seeds, **kw))[1]

    search(Recording(synthetic_space(6, 4), seed=3), method="gpo", budget=40, seeds=(0, 1, 2), seed=0)
    assert calls and all(len(set(c)) == 1 for c in calls)
    assert {c[0] for c in calls} == {0, 1, 2}


def test_a_space_that_fits_the_budget_is_enumerated():
    problem = SyntheticProblem(synthetic_space(3, 3), seed=1)
    for method in ("hybrid", "random", "epo", "gpo"):
        result = search(problem, method=method, budget=30, seed=0)
        assert result.extra.get("enumerated") and len(result.evaluations) == 27
        assert result.best.candidate == problem.optimum()


def test_reranking_on_validation_seeds_picks_the_robust_candidate():
    space = synthetic_space(6, 4)
    # Seed 0 favours candidates with option 1 in slot 0 (a fluke); every other seed does not.
    problem = SyntheticProblem(space, seed=3, noise=0.0)
    base_losses = problem.candidate_losses

    def losses(cands, seeds):
        out = base_losses(cands, seeds)
        for i, c in enumerate(cands):
            for j, s in enumerate(seeds):
                if s == 0 and c[0] == 1:
                    out[i, j] -= 0.1
        return out

    problem.candidate_losses = losses
    plain = search(problem, method="random", budget=30, seed=0)
    assert plain.best.candidate[0] == 1
    sel = SelectionConfig(rerank_top=6, validation_seeds=(5, 6), max_share=0.5)
    robust = search(problem, method="random", budget=30, seed=0, selection=sel)
    true = lambda c: float(base_losses([c], [1])[0, 0])  # noqa: E731
    assert true(robust.best.candidate) < true(plain.best.candidate)
    rows = robust.extra["selection"]["candidates"]
    assert [r["objective"] for r in rows] == sorted(r["objective"] for r in rows)
    assert robust.cost <= 30 + 1e-9 and robust.extra["selection"]["cost"] == 12
    with pytest.raises(ValueError, match="validation seeds"):
        search(problem, budget=30, seeds=(5,), selection=sel)


def test_selection_chooses_validation_seeds_and_skips_reranking_at_small_budgets():
    sel = SelectionConfig(rerank_top=4)
    assert sel.resolved((0,), (1, 5)).validation_seeds == (2, 3)  # above the search seeds, never a report seed
    assert sel.resolved((0, 1)).validation_seeds == (2, 3)
    fixed = sel.resolved((0,))
    assert fixed.top_for(40) == 4 and fixed.reserve(40) == 8  # at most 20% of the budget
    assert fixed.top_for(20) == 2 and fixed.top_for(8) == 0  # fewer candidates, then none
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    small = search(problem, method="random", budget=8, seed=0, selection=sel)
    assert "too small" in small.extra["selection"]["skipped"] and len(small.evaluations) == 8
    with pytest.raises(ValueError, match="validation seeds"):
        SelectionConfig(rerank_top=2, validation_seeds=(3,)).resolved((0,), (3,))


def test_hybrid_follows_the_gradient_and_survives_a_misleading_one():
    """GPO can fail: where the relaxed loss points at wrong options for half the slots, the hybrid does worse than
    with the true gradient (so the gradient is really used), yet evolution still finds candidates that beat the user
    prompt (measured: without the gradient's help it roughly ties random search)."""
    worse = 0
    for s in range(6):
        costs = torch.rand(10, 6, generator=torch.Generator().manual_seed(50 + s)) * 0.1
        misleading = costs.clone()
        misleading[::2] = -misleading[::2]
        wrong = SyntheticProblem(synthetic_space(10, 6), costs=costs, relaxed_costs=misleading)
        h_wrong = search(wrong, method="hybrid", budget=40, seed=s)
        h_true = search(SyntheticProblem(synthetic_space(10, 6), costs=costs), method="hybrid", budget=40, seed=s)
        worse += h_wrong.best.objective > h_true.best.objective
        default = float(wrong.candidate_losses([wrong.space.default], [0])[0, 0])
        assert h_wrong.best.objective < default
    assert worse >= 5


@pytest.mark.parametrize("method", ["hybrid", "random", "greedy"])
def test_a_wall_clock_budget_stops_the_search_after_its_first_answer(method):
    problem = SyntheticProblem(synthetic_space(10, 6), seed=11)
    result = search(problem, method=method, budget=40, seed=0, time_budget=1e-9)
    assert 1 <= len(result.evaluations) <= 20 and result.cost < 40
    assert "evaluation" in result.timings
    unlimited = search(SyntheticProblem(synthetic_space(10, 6), seed=11), method=method, budget=40, seed=0)
    assert len(unlimited.evaluations) > len(result.evaluations)


def test_samples_go_in_one_pass_on_the_cpu_and_one_by_one_on_a_gpu():
    from dpo_diff.search.gradient import _first_chunk

    class OnDevice:
        def __init__(self, device):
            self.backend = type("B", (), {"device": device})()

    cfg = GradientSearchConfig(samples=4)
    assert _first_chunk(OnDevice("cpu"), cfg) == 4 and _first_chunk(OnDevice("cuda:0"), cfg) == 1
    assert _first_chunk(OnDevice("cuda"), GradientSearchConfig(samples=4, sample_chunk=2)) == 2


def test_light_constants_name_the_presets_and_methods_the_cli_offers():
    from dpo_diff.search import GPO_PRESET_NAMES
    from dpo_diff.search.gradient import GPO_PRESETS

    assert tuple(GPO_PRESETS) == GPO_PRESET_NAMES


@pytest.mark.parametrize("method", ["gpo", "hybrid"])
@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_the_planned_gpo_skip_is_the_one_the_search_makes(method, seeds):
    """What optimize warns about before a run (planned_gpo_shortfall) is exactly what the search then does, at
    budgets around the threshold, with re-ranking reserved and at a budget where the space is enumerated."""
    from dpo_diff.search.api import planned_gpo_shortfall

    selection = SelectionConfig(4)
    for budget in (4, 8, 12, 13, 16, 20, 40):
        problem = SyntheticProblem(synthetic_space(4, 5), seed=11)
        planned = planned_gpo_shortfall(problem, method=method, budget=budget, seeds=seeds, selection=selection)
        result = search(problem, method=method, budget=budget, seeds=seeds, seed=0, selection=selection)
        skipped = result.extra.get("gpo_skipped", "")
        assert (planned is not None) == bool(skipped), (budget, planned, skipped)
        if planned is not None:
            assert f"allows {planned} iteration(s)" in skipped
    assert planned_gpo_shortfall(SyntheticProblem(synthetic_space(4, 5)), method="random", budget=4, seeds=(0,)) \
        is None
    tiny = SyntheticProblem(synthetic_space(2, 2), seed=11)  # 4 candidates: enumerated, GPO never starts
    assert planned_gpo_shortfall(tiny, method=method, budget=4 * len(seeds), seeds=seeds) is None
    assert search(tiny, method=method, budget=4 * len(seeds), seeds=seeds).extra["enumerated"]
