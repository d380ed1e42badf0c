"""benchmarks/robustness.py's summary: the ground-truth-against-judge counts that expose judge gaming."""

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmarks/robustness.py")


def _rec(task, prompt, user_loss, best_loss, user_faith, best_faith, root=0):
    return {"task": task, "prompt": prompt, "method": "random", "variant": "rerank", "root": root, "threads": 1,
            "user_report_loss": user_loss, "best_report_loss": best_loss, "user_faithful": user_faith,
            "best_faithful": best_faith, "cost": 40.0, "seconds": 1.0}


def test_judge_gains_are_split_by_what_the_ground_truth_did(bench):
    records = [
        _rec("improve", "real", 0.3, 0.2, 0.0, 0.5),  # judge and ground truth gain
        _rec("improve", "gamed", 0.3, 0.2, 0.0, 0.0),  # room to move, did not: gaming
        _rec("improve", "worse", 0.3, 0.2, 0.5, 0.25),  # against: gaming
        _rec("improve", "full", 0.3, 0.2, 1.0, 1.0),  # already faithful: no room
        _rec("improve", "no gain", 0.3, 0.4, 0.0, 0.5),  # the judge got worse: not counted
        _rec("attack", "broken", 0.1, 0.2, 1.0, 0.0),  # attack: loss up, faithfulness down is a gain
        _rec("attack", "gamed", 0.1, 0.2, 1.0, 1.0),
    ]
    rows = {line.split(" | ")[0].strip("| "): line for line in bench.gaming_lines(records) if line.startswith("| ")}
    assert rows["improve"].endswith("| 5 | 4 | 1 | 1 | 1 | 1 |")
    assert rows["attack"].endswith("| 2 | 2 | 1 | 0 | 1 | 0 |")


def test_roots_are_averaged_before_counting(bench):
    records = [_rec("improve", "p", 0.3, 0.2, 0.0, 0.5, root=0), _rec("improve", "p", 0.3, 0.35, 0.0, 0.0, root=1)]
    line = next(line for line in bench.gaming_lines(records) if line.startswith("| improve"))
    assert line.endswith("| 1 | 1 | 1 | 0 | 0 | 0 |")  # mean loss 0.275 < 0.3, mean faithfulness 0.25 > 0


def _full(method, prompt, user_faith, best_faith, user_acc, best_acc, changes, best_loss=0.2, root=0):
    rec = _rec("improve", prompt, 0.3, best_loss, user_faith, best_faith, root)
    rec.update(method=method, user_attribute_accuracy=user_acc, best_attribute_accuracy=best_acc,
               best_changes=changes, best_prompt=prompt, best_negative_prompt=f"{changes} terms")
    return rec


def test_attribute_accuracy_and_answers_by_changed_slots_are_reported(bench):
    records = []
    for i in range(4):
        records += [_full("random", f"p{i}", 0.0, 0.0, 0.8, 0.7, 7, best_loss=0.15),  # dense: judge gamed
                    _full("greedy", f"p{i}", 0.0, 0.5, 0.8, 0.9, 1)]  # sparse: ground truth gains
    table = bench.summarise(records)
    row = next(line for line in table.splitlines() if line.startswith("| improve | greedy | rerank | 4 |"))
    assert "+10.0000" in row and "| 1 |" in row  # Δ attribute accuracy +10 points, median 1 change
    assert "improve greedy (rerank) vs random, attribute accuracy points: advantage +20.0000" in table
    assert "better/tie/worse 4/0/0" in table
    by_changes = [line for line in bench.sparsity_lines(records) if line.startswith("| improve")]
    assert by_changes == ["| improve | greedy | rerank | 1-2 | 4 | +50.0 | +10.0 | -0.1000 |",
                          "| improve | random | rerank | 6+ | 4 | +0.0 | -10.0 | -0.1500 |"]
    assert "improve greedy (rerank) vs the user prompt, loss: advantage +0.1000 [+0.1000, +0.1000]" in table


def test_records_without_attribute_accuracy_still_summarise(bench):
    table = bench.summarise([{**_rec("improve", f"p{i}", 0.3, 0.2, 0.0, 0.5), "best_prompt": "x",
                              "best_negative_prompt": ""} for i in range(3)])
    assert "| improve | random | rerank | 3 | 1 |" in table and "attribute accuracy points" not in table


def test_method_specs_name_the_proposal_and_the_beam(bench):
    name, extra = bench.method_spec("random+sparse")
    assert name == "random" and extra["proposal"].kind == "sparse" and extra["proposal"].mean_changes == 2.0
    name, extra = bench.method_spec("greedy+beam3")
    assert name == "greedy" and extra["greedy"].beam == 3
    assert bench.method_spec("epo+sparse1.5")[1]["proposal"].mean_changes == 1.5
    for bad in ("walk", "random+beam2", "random+dense"):
        with pytest.raises(ValueError):
            bench.method_spec(bad)


def test_the_both_modifier_searches_synonym_swaps_and_antonym_negatives_on_the_same_user_prompt(bench):
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.world.spaces import world_space

    assert bench.method_spec("greedy+both")[1]["space"] == "both"
    base = Problem(world_space("a red circle", "improve"), Task("improve"), None, None, SamplingConfig(20))
    assert bench.problem_for(base, "greedy") is base
    both = bench.problem_for(base, "greedy+both").space
    assert {s.target for s in both.slots} == {"positive", "negative"} and both.prompt == "a red circle"
    assert {s.target for s in base.space.slots} == {"negative"}
    assert {s.target for s in world_space("a red circle", "improve", "synonym").slots} == {"positive"}
    with pytest.raises(ValueError, match="unknown space kind 'all'"):
        world_space("a red circle", "improve", "all")


def test_the_select_suffix_names_a_preset_of_selection_judges(bench):
    name, extra = bench.method_spec("random+select=both")
    assert name == "random" and extra["select"] == "both"
    assert bench.SELECT_PRESETS["both"] == ("clip:world:judge", "clip:world:judge_b")
    name, extra = bench.method_spec("greedy+beam2+select=judge_b")
    assert extra["greedy"].beam == 2 and extra["select"] == "judge_b"
    with pytest.raises(ValueError, match="unknown selection preset 'clip' in 'random\\+select=clip'; choose from "
                                         "judge_b, both, vqa"):
        bench.method_spec("random+select=clip")
    from dpo_diff.search.selection import normalised_select_judges

    for judges in bench.SELECT_PRESETS.values():  # every preset names canonical specs (as records store them)
        assert normalised_select_judges(judges) == judges


def test_with_a_select_preset_the_selection_judges_decide_whether_the_user_prompt_is_kept(bench, monkeypatch):
    """The search judge finds every candidate worse than the user prompt; the selection judge's verdict decides."""
    import torch

    from dpo_diff.testing import synthetic_space
    from test_select_judges import FakeJudge, ImageProblem

    class Checker:
        def score(self, images, prompts):
            return [type("F", (), {"checks": [], "all_correct": True, "attribute_accuracy": 1.0,
                                   "judgeable": True})() for _ in prompts]

    costs = torch.tensor([[0.0, 0.05, 0.1]] * 4)  # the user prompt (all zeros) is the search judge's best
    base = {"losses": dict.fromkeys(range(10), 0.8), "faithful": 0.0, "attribute_accuracy": 0.5}
    for select_loss, kept in ((0.9, True), (0.1, False)):
        problem = ImageProblem(synthetic_space(4, 3), "improve", costs, noise=0.0)
        judge = FakeJudge({tuple(problem.space.default): 0.5}, default=select_loss)
        monkeypatch.setattr(bench, "loaded_select_judges", lambda p, judges: dict.fromkeys(judges, judge))
        rec = bench.run_job(problem, Checker(), "w0 w1 w2 w3", "random+select=judge_b", "rerank", 0, [7], base, 40)
        assert rec["select"] == "judge_b" and rec["select_judges"] == ["clip:world:judge_b"]
        assert rec["kept_user"] is kept and (rec["best_prompt"] == problem.space.prompt) is kept
        assert rec["vetoes"] == {"clip:world:judge_b": 4 if kept else 0} and rec["select_calls"] == 5 * 2
        assert "select" not in rec["settings"]
    with pytest.raises(ValueError, match="run it with the rerank variant, not 1seed"):
        bench.run_job(problem, Checker(), "w0 w1 w2 w3", "random+select=judge_b", "1seed", 0, [7], base, 40)
    plain = bench.run_job(ImageProblem(synthetic_space(4, 3), "improve", costs, noise=0.0), Checker(),
                          "w0 w1 w2 w3", "random", "rerank", 0, [7], base, 40)
    assert "select" not in plain and plain["best_prompt"] == problem.space.prompt  # the search judge alone


def test_selection_judges_costs_and_verdicts_are_tabled_only_for_runs_that_have_them(bench):
    plain = _rec("improve", "p", 0.3, 0.2, 0.0, 0.5)
    assert bench.selection_lines([plain]) == []
    judged = [dict(_rec("improve", p, 0.3, 0.2, 0.0, 0.5), method="greedy+select=judge_b", select="judge_b",
                   kept_user=kept, vetoes={"clip:world:judge_b": n}, select_calls=10)
              for p, kept, n in (("a", True, 4), ("b", False, 1))]
    skipped = dict(judged[0], prompt="c", kept_user=None, vetoes={}, select_calls=0)  # re-ranking skipped
    rows = [line for line in bench.selection_lines([plain, *judged, skipped]) if line.startswith("| improve")]
    assert rows == ["| improve | greedy+select=judge_b | rerank | 3 | 40.0 | 6.7 | 1 of 2 | "
                    "clip:world:judge_b 2.50 |"]
    full = [dict(r, best_prompt="p", best_negative_prompt="") for r in (plain, *judged)]
    assert "Selection judges" in bench.summarise(full)


def test_screening_verdicts_are_kept_so_a_resumed_run_does_not_screen_again(bench, tmp_path):
    calls = []

    def screen(verdict):
        calls.append(verdict)
        return verdict

    path = tmp_path / "screening.jsonl"
    key = {"task": "improve", "prompt": "a red circle", "seeds": [9000, 9001], "attack_min_rate": 0.5, "steps": 20}
    assert bench.screened(path, key, lambda: screen(True)) is True
    assert bench.screened(path, key, lambda: screen(False)) is True  # kept: not screened again
    other = dict(key, seeds=[50, 51])  # another screening rule is another verdict
    assert bench.screened(path, other, lambda: screen(False)) is False
    assert calls == [True, False]
    with path.open("a") as f:
        f.write('{"task": "improve", "prompt": "a blue')  # a write cut short by a kill
    assert bench.screened(path, dict(key, prompt="a blue square"), lambda: screen(True)) is True
    assert calls == [True, False, True]
    assert bench.screened(path, dict(key, prompt="a blue square"), lambda: screen(False)) is True  # kept whole
