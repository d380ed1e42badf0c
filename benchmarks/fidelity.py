"""The fidelity ladder, measured before it is used (shapes world, development prompts only).

For random candidates of improve spaces (antonym negative prompts of hard prompts) and of large attack spaces (synonym
rewrites of two-object prompts, at least ``--min-candidates`` candidates), each cheap fidelity
(:mod:`dpo_diff.fidelity`: few-step generations ``steps:N``, the no-grad shortcut loss ``shortcut:K``, one seed
``full@1``) is compared with the full sampler's loss averaged over the search seeds:

* Spearman rho against the full loss, per prompt, then mean and bootstrap 95% interval over prompts;
* top-quarter recall: the share of the full loss's best quarter that the fidelity's best quarter contains (what a
  successive-halving rung that keeps a quarter would keep);
* cost charged per candidate (full-generation equivalents, ``Evaluator.cost_of``: the one rule) and wall seconds
  per candidate when scored in one batch.

Records go to ``OUT/records.jsonl`` one prompt at a time (a rerun resumes). Development prompt seeds only.

    python benchmarks/fidelity.py --prompt-seed 11 --n-improve 6 --n-attack 4 --candidates 40 --out runs/fidelity
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_FIDELITIES = "steps:2,steps:4,steps:6,steps:10,shortcut:2,shortcut:4,shortcut:6,shortcut:10,shortcut:14,full@1"


def prompt_record(problem, fidelities: list[str], seeds: tuple[int, ...], n: int, root: int) -> dict:
    from scipy.stats import spearmanr

    from dpo_diff.search.base import Evaluator
    from dpo_diff.search.evolution import distinct_random
    from dpo_diff.seeding import rng as make_rng

    cands = distinct_random(problem.space.sizes, n, make_rng(root, "fidelity-bench", problem.space.prompt))
    ev = Evaluator(problem, seeds, budget=1e9)
    sign = problem.task.sign
    t0 = time.perf_counter()
    full = (problem.candidate_losses(cands, seeds).mean(1) * sign).tolist()
    rec = {"candidates": len(cands), "space": problem.space.num_candidates,
           "full": {"cost": ev.cost_of("full"), "seconds": (time.perf_counter() - t0) / len(cands)}}
    best_q = set(sorted(range(len(cands)), key=lambda i: full[i])[: max(1, len(cands) // 4)])
    for spec in fidelities:
        t0 = time.perf_counter()
        vals = (problem.candidate_losses(cands, seeds, spec).mean(1) * sign).tolist()
        secs = (time.perf_counter() - t0) / len(cands)
        top_q = set(sorted(range(len(cands)), key=lambda i: vals[i])[: len(best_q)])
        rho = spearmanr(vals, full).statistic if len(set(vals)) > 1 and len(set(full)) > 1 else float("nan")
        rec[spec] = {"rho": float(rho), "recall_top_quarter": len(top_q & best_q) / len(best_q),
                     "cost": ev.cost_of(spec), "seconds": secs}
    rec["full_values"] = full
    return rec


def timing(problem, fidelities: list[str], seeds: tuple[int, ...], n: int, repeats: int) -> dict[str, float]:
    """Median wall seconds of scoring ``n`` candidates in one batch at each fidelity over the full sampler's, the
    fidelities interleaved in every repeat (so a change of machine load hits all of them alike)."""
    import statistics

    from dpo_diff.search.evolution import distinct_random
    from dpo_diff.seeding import rng as make_rng

    cands = distinct_random(problem.space.sizes, n, make_rng(0, "fidelity-timing"))
    times: dict[str, list[float]] = {f: [] for f in ["full", *fidelities]}
    for _ in range(repeats):
        for spec in times:
            t0 = time.perf_counter()
            problem.candidate_losses(cands, seeds, spec)
            times[spec].append(time.perf_counter() - t0)
    full = statistics.median(times["full"])
    return {spec: statistics.median(v) / full for spec, v in times.items()}


def summarize(records: list[dict], fidelities: list[str]) -> str:
    import numpy as np
    from scipy.stats import bootstrap

    lines = ["| task | fidelity | prompts | rho vs full | top-quarter recall | cost charged | seconds / candidate | "
             "seconds ratio to full |", "|---|---|---|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task]
        full_s = np.mean([r["full"]["seconds"] for r in rows])
        for spec in fidelities:
            rhos = np.array([r[spec]["rho"] for r in rows if spec in r and r[spec]["rho"] == r[spec]["rho"]])
            if len(rhos) == 0:
                continue
            if len(rhos) > 1:
                ci = bootstrap((rhos,), np.mean, n_resamples=2000, method="percentile",
                               random_state=np.random.default_rng(0)).confidence_interval
                cell = f"{rhos.mean():+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]"
            else:
                cell = f"{rhos.mean():+.2f}"
            rec = np.mean([r[spec]["recall_top_quarter"] for r in rows if spec in r])
            cost = np.mean([r[spec]["cost"] for r in rows if spec in r])
            secs = np.mean([r[spec]["seconds"] for r in rows if spec in r])
            lines.append(f"| {task} | {spec} | {len(rhos)} | {cell} | {rec:.2f} | {cost:.3f} | {secs:.3f} | "
                         f"{secs / full_s:.3f} |")
        lines.append(f"| {task} | full | {len(rows)} | +1 | 1 | {rows[0]['full']['cost']:.3f} | {full_s:.3f} | 1 |")
    return "\n".join(lines)


def prompts_for(task: str, args: argparse.Namespace) -> list[tuple[str, object]]:
    from dpo_diff.world import heldout_prompts
    from dpo_diff.world.spaces import world_space

    n = args.n_improve if task == "improve" else args.n_attack
    out = []
    for prompt in heldout_prompts("hard", 30 * max(n, 1), seed=args.prompt_seed, pool="v1"):
        space = world_space(prompt, task)
        big_enough = task == "improve" or space.num_candidates >= args.min_candidates
        if not space.is_trivial and big_enough and len(out) < n:
            out.append((prompt, space))
    return out


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.files import append_jsonl, read_jsonl
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, judge_path

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    done = {(r["task"], r["prompt"]) for r in read_jsonl(path, what="fidelity record").records} if path.exists() \
        else set()
    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judge = ClipJudge.from_pretrained(str(judge_path()))
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE, batch_size=args.batch_size)
    seeds = tuple(parse_seeds(args.seeds))
    for task in args.tasks:
        for prompt, space in prompts_for(task, args):
            if (task, prompt) in done:
                continue
            problem = Problem(space, Task(task), backend, judge, sampling)
            rec = {"task": task, "prompt": prompt, "prompt_seed": args.prompt_seed, "steps": args.steps,
                   "seeds": list(seeds), **prompt_record(problem, args.fidelities, seeds, args.candidates, 0)}
            append_jsonl(path, rec)
            print(f"{task} {prompt!r}: " + "  ".join(f"{f} {rec[f]['rho']:+.2f}" for f in args.fidelities),
                  flush=True)
    return list(read_jsonl(path, what="fidelity record").records)


def timing_table(args: argparse.Namespace) -> str:
    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, judge_path

    torch.set_num_threads(args.threads)
    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judge = ClipJudge.from_pretrained(str(judge_path()))
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE, batch_size=args.batch_size)
    lines = [f"seconds per batch of {args.batch_size} candidates over the full sampler's ({args.threads} thread(s), "
             f"median of 3 interleaved repeats)", "", "| task | " + " | ".join(args.fidelities) + " |",
             "|---|" + "---|" * len(args.fidelities)]
    for task in args.tasks:
        _, space = prompts_for(task, args)[0]
        problem = Problem(space, Task(task), backend, judge, sampling)
        ratios = timing(problem, args.fidelities, tuple(parse_seeds(args.seeds)), args.batch_size, 3)
        lines.append(f"| {task} | " + " | ".join(f"{ratios[f]:.3f}" for f in args.fidelities) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-seed", type=int, default=11, help="a development prompt seed (2-999, pool v1)")
    p.add_argument("--tasks", type=lambda s: s.split(","), default=["improve", "attack"])
    p.add_argument("--n-improve", type=int, default=6)
    p.add_argument("--n-attack", type=int, default=4)
    p.add_argument("--min-candidates", type=int, default=4000, help="attack spaces at least this large")
    p.add_argument("--candidates", type=int, default=40, help="random candidates per prompt")
    p.add_argument("--fidelities", type=lambda s: s.split(","), default=DEFAULT_FIDELITIES.split(","))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0,1", help="search seeds the full loss is averaged over")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--timing", action="store_true",
                   help="only measure seconds per batch at each fidelity over the full sampler's (interleaved "
                        "repeats on the first prompt of each task), printed as ratios")
    p.add_argument("--out", default="runs/fidelity")
    args = p.parse_args(argv)
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world.prompts import DEV_PROMPT_SEEDS

    if args.prompt_seed not in DEV_PROMPT_SEEDS:
        p.error(f"--prompt-seed {args.prompt_seed} is not a development prompt seed (2-999); evaluation seeds are "
                f"never used to choose a ladder")
    parse_seeds(args.seeds)
    if args.timing:
        print(timing_table(args))
        return 0
    if args.summary_only:
        from dpo_diff.files import read_jsonl

        records = list(read_jsonl(Path(args.out) / "records.jsonl", what="fidelity record").records)
    else:
        records = run(args)
    table = summarize(records, args.fidelities)
    print(table)
    (Path(args.out) / "summary.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
