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
