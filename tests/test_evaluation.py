"""Batched exact evaluation and resumable optimize runs on the tiny Stable Diffusion model."""

import json

import pytest
import torch

from dpo_diff.optimize import OptimizeConfig, optimize
from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.space import space_from_substitutes

SPACE = space_from_substitutes("a red dog on the grass", {"dog": ["hound", "puppy"]},
                               {"red": ["blue", "green"], "grass": ["sand", "snow"]})


def test_batched_evaluation_equals_one_at_a_time(backend, judge):
    cands = [(0, 0, 0), (1, 2, 0), (2, 1, 2), (0, 2, 1)]
    seeds = (0, 3, 4)
    batched = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=5, batch_size=12))
    single = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=5, batch_size=1))
    torch.testing.assert_close(batched.candidate_losses(cands, seeds), single.candidate_losses(cands, seeds),
                               atol=1e-5, rtol=1e-5)


class OOMBackend:
    """Wraps a backend; refuses batches larger than 2 like a GPU that ran out of memory."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, *args, **kwargs):
        if len(prompts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append(len(prompts))
        return self.inner.generate(prompts, *args, **kwargs)


def test_out_of_memory_backs_off_to_smaller_batches(backend, judge):
    fake = OOMBackend(backend)
    problem = Problem(SPACE, Task("improve"), fake, judge, SamplingConfig(steps=4, batch_size=8))
    ref = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=4, batch_size=8))
    cands = [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    torch.testing.assert_close(problem.candidate_losses(cands, (0, 1)), ref.candidate_losses(cands, (0, 1)))
    assert fake.batches and max(fake.batches) == 2


class CountingBackend(OOMBackend):
    def generate(self, prompts, *args, **kwargs):
        self.batches.append(len(prompts))
        return self.inner.generate(prompts, *args, **kwargs)


def test_killed_optimize_resumes_without_reevaluating(backend, judge, tmp_path):
    cfg = dict(task="improve", method="epo", budget=10, seeds=(0,), report_seeds=(7,), steps=4, batch_size=4,
               epo={"population_size": 4, "num_parents": 2, "num_mutants": 2, "num_crossovers": 2})
    full = optimize(OptimizeConfig(out=str(tmp_path / "full"), **cfg), space=SPACE, backend=backend, judge=judge,
                    progress=False)
    # Simulate a crash after 4 evaluations: keep the first 4 progress lines, drop the rest and the result.
    run = tmp_path / "crashed"
    lines = (tmp_path / "full" / "progress.jsonl").read_text().splitlines()
    assert len(lines) >= 6
    run.mkdir()
    (run / "progress.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 2])  # torn line
    (run / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    counting = CountingBackend(backend)
    resumed = optimize(OptimizeConfig(out=str(run), **cfg), space=SPACE, backend=counting, judge=judge,
                       progress=False, resume=True)
    assert resumed["best"] == full["best"] and resumed["after"] == full["after"] and resumed["cost"] == full["cost"]
    # generated: the baseline (1 row), the evaluations not finished before the crash, and the final report
    # (2 pairs x 2 seeds, or 1 pair x 2 seeds when the user prompt stays best)
    search_rows = sum(counting.batches) - 1 - (4 if full["note"] == "" else 2)
    assert search_rows == len(lines) - 4
    best = json.loads((run / "best.json").read_text())
    assert best["objective"] <= min(json.loads(line)["objective"] for line in lines)


def test_resume_refuses_a_different_config(backend, judge, tmp_path):
    cfg = dict(task="improve", method="random", budget=3, seeds=(0,), report_seeds=(7,), steps=4)
    optimize(OptimizeConfig(out=str(tmp_path), **cfg), space=SPACE, backend=backend, judge=judge, progress=False)
    cfg["budget"] = 4
    with pytest.raises(ValueError, match="different configuration"):
        optimize(OptimizeConfig(out=str(tmp_path), **cfg), space=SPACE, backend=backend, judge=judge,
                 progress=False, resume=True)


def test_resumed_search_seconds_count_the_interrupted_part(backend, judge, tmp_path):
    cfg = dict(task="improve", method="random", budget=3, seeds=(0,), report_seeds=(7,), steps=4)
    full = optimize(OptimizeConfig(out=str(tmp_path / "full"), **cfg), space=SPACE, backend=backend, judge=judge,
                    progress=False)
    lines = [json.loads(line) for line in (tmp_path / "full" / "progress.jsonl").read_text().splitlines()]
    elapsed = [line["elapsed_s"] for line in lines]
    assert elapsed == sorted(elapsed) and 0 < elapsed[-1] <= full["search_seconds"] <= full["total_seconds"]
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    (run / "progress.jsonl").write_text(json.dumps({**lines[0], "elapsed_s": 1000.0}) + "\n")  # killed after 1000 s
    resumed = optimize(OptimizeConfig(out=str(run), **cfg), space=SPACE, backend=backend, judge=judge,
                       progress=False, resume=True)
    assert 1000 < resumed["search_seconds"] < 1000 + full["total_seconds"] + 60
    assert resumed["total_seconds"] >= resumed["search_seconds"]
