"""benchmarks/landscape.py on a problem whose judge is gamed by dense negatives and whose ground truth is known."""

import argparse
import json

import pytest
import torch

from dpo_diff.problem import SamplingConfig, Task
from dpo_diff.testing import synthetic_space


@pytest.fixture(scope="module")
def land(load_script):
    return load_script("benchmarks/landscape.py")


class GamedProblem:
    """Judge: every negative term lowers the loss a little (dense answers win). Ground truth: right only with the
    term ``w1x2`` and at most two terms. ``generated`` counts (candidate, seed) generations."""

    def __init__(self):
        self.space, self.task, self.sampling = synthetic_space(5, 4, "negative"), Task("improve"), SamplingConfig(20)
        self.generated = 0

    def calls_for(self, steps=None):
        return 20

    def losses(self, pairs, seeds, keep_images=False):
        self.generated += len(pairs) * len(seeds)
        terms = [[t for t in p.negative_prompt.split(", ") if t] for p in pairs]
        loss = torch.tensor([[0.3 - 0.01 * len(t) + 0.001 * s for s in seeds] for t in terms])
        images = [("w1x2" in t and len(t) <= 2, len(t)) for t in terms for _ in seeds]  # "images": the truth
        return loss, images


def score(images):
    return [(ok, 1.0 if ok else 0.5) for ok, _ in images]


def args(**kw):
    base = {"pair_top": 4, "uniform": 8, "roots": [0, 1], "budget": 20.0, "report": [100, 101],
            "space_kind": "antonym"}
    return argparse.Namespace(**{**base, **kw})


def test_the_map_finds_the_sparse_truth_the_judge_misses(land):
    problem = GamedProblem()
    landscape = land.Landscape(problem, score)
    rec = land.landscape_record(landscape, args())
    picks = rec["picks"]
    assert picks["checker's choice"][0]["all_correct"] == 1.0 and picks["checker's choice"][0]["changes"] <= 2
    assert picks["judge exhaustive"][0]["changes"] >= 3 and picks["judge exhaustive"][0]["all_correct"] == 0.0
    assert picks["user"][0]["changes"] == 0 and len(picks["uniform random"]) == 2  # one answer per root
    assert set(rec["by_bucket_search_seeds"]) >= {"0", "1", "2"}
    assert rec["by_bucket_search_seeds"]["1"]["n"] == 15  # every single change: 5 slots x 3 terms
    table = land.summarise([json.loads(json.dumps(rec))])
    assert "| checker's choice | 100.0% |" in table and "| greedy |" in table and "| 1 | 15 |" in table


def test_generations_are_memoised_and_a_saved_memo_is_not_generated_again(land, tmp_path):
    path = tmp_path / "memo.jsonl"
    first = GamedProblem()
    land.landscape_record(land.Landscape(first, score, save=land.memo_saver(path)), args())
    memo = land.load_memo(path)
    assert len(memo) == first.generated  # nothing generated twice, everything saved
    again = GamedProblem()
    rec = land.landscape_record(land.Landscape(again, score, memo), args())
    assert again.generated == 0 and rec["generations"] == len(memo)


def test_buckets(land):
    assert [land.bucket(k) for k in (0, 1, 2, 3, 5, 6, 9)] == ["0", "1", "2", "3-5", "3-5", "6+", "6+"]
