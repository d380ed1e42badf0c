"""Candidate evaluations per second: batched (candidates x seeds through the UNet together, CFG halves stacked)
against one candidate and one seed per sampler call (what the reference implementation does), measured in one run
and printed as a ratio; then end-to-end seconds per prompt for hybrid search at budget 40 on one seed.

    python benchmarks/eval_throughput.py                                   # tiny random SD, CPU
    python benchmarks/eval_throughput.py --arch sd15 --device cuda --dtype fp16 --batch-size 32

Targets on a GPU (SD v1.x shapes, 512 px, fp16): ratio >= 3.5x; hybrid at budget 40 <= 20 s per prompt; GPO wall time
per charged unit <= 1.2x a batched evaluation's (the budget counts a GPO iteration as (k + K) / steps generations
per sample and seed, ignoring its backward pass, so "equal budget" must not hide a slower GPO).
``--json PATH`` also writes the numbers as JSON (``scripts/gpu_suite.sh`` reads it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def gpo_per_unit(problem, args, batched_s: float) -> dict:
    """Wall seconds of GPO per charged unit (full-generation equivalent) against a batched evaluation's, for the
    robust preset with one Gumbel sample per pass and with all samples in one batched pass (issue target: <= 1.2x)."""
    from dpo_diff.search.base import Evaluator
    from dpo_diff.search.gradient import GradientSearchConfig, train_mixture

    out = {}
    for name, chunk in (("gpo_chunk1", 1), ("gpo_batched", None)):
        cfg = GradientSearchConfig(iterations=3, sample_chunk=chunk, budget_share=None, min_iterations=1,
                                   score_every=0)
        ev = Evaluator(problem, (0,), budget=1000.0)
        sync = torch.cuda.synchronize if problem.backend.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        state = train_mixture(problem, ev, cfg, seed=0)
        sync()
        per_unit = (time.perf_counter() - t0) / state.gpo_cost
        print(f"GPO ({name}): {per_unit:.3f} s per charged unit = {per_unit / batched_s:.2f}x a batched evaluation's")
        out[f"{name}_s_per_unit"], out[f"{name}_ratio"] = per_unit, per_unit / batched_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", choices=("tiny", "sd15"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--skip-hybrid", action="store_true")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args()

    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.search.api import search
    from dpo_diff.space import space_from_substitutes
    from dpo_diff.testing import random_backend, save_tiny_clip

    backend = random_backend(args.arch, args.device, args.dtype)
    judge = ClipJudge.from_pretrained(str(save_tiny_clip(tempfile.mkdtemp(), image_size=32)), device=args.device)
    space = space_from_substitutes(
        "a red car on a snowy road at night",
        {"car": ["truck", "van", "sedan"], "road": ["street", "highway"]},
        {"red": ["blue", "green", "yellow"], "snowy": ["sunny", "dry", "green"], "night": ["day", "noon"]},
    ).select("negative")  # improve: the antonym (negative-prompt) space, sizes (4, 4, 3)
    problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(args.steps, 7.5,
                                                                             batch_size=args.batch_size))
    cands = [(i % 4, (i // 4) % 4, i % 3) for i in range(args.candidates)]
    problem.candidate_losses(cands[:1], (0,))  # warm-up

    def timed(batch_size: int, n: int) -> float:
        problem.sampling = SamplingConfig(args.steps, 7.5, batch_size=batch_size)
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        problem.candidate_losses(cands[:n], (0,))
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    one = timed(1, min(args.candidates, 8))
    batched = timed(args.batch_size, args.candidates)
    print(f"arch={args.arch} device={args.device} dtype={args.dtype} steps={args.steps}")
    print(f"one at a time : {one:.3f} s per evaluation ({1 / one:.2f}/s)")
    print(f"batch {args.batch_size:3d}     : {batched:.3f} s per evaluation ({1 / batched:.2f}/s)")
    print(f"batched / one-at-a-time throughput ratio: {one / batched:.2f}x")

    record = {"arch": args.arch, "device": args.device, "dtype": args.dtype, "steps": args.steps,
              "batch_size": args.batch_size, "one_at_a_time_s": one, "batched_s": batched, "ratio": one / batched}
    record.update(gpo_per_unit(problem, args, batched))
    if not args.skip_hybrid:
        problem.sampling = SamplingConfig(args.steps, 7.5, batch_size=args.batch_size)
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = search(problem, method="hybrid", budget=40, seeds=(0,), seed=0)
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        print(f"hybrid, budget 40, one seed: {seconds:.1f} s per prompt "
              f"({len(result.evaluations)} evaluations, cost {result.cost:.1f})")
        record.update(hybrid_s=seconds, hybrid_evaluations=len(result.evaluations), hybrid_cost=result.cost)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
