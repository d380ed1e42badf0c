"""Which cheap score predicts the held-out objective? (shapes world, development prompts only)

Every search picks its answer by the loss on its own search seeds and is judged on other seeds (the report seeds).
``benchmarks/fidelity.py`` measures how well each fidelity ranks candidates like the full sampler *on the same
seeds*; this measures what a search actually needs: how well a score on the search seeds ranks candidates by their
loss on **held-out** seeds, and how much choosing by it gains there. If that transfer is weak, more looks at the
same seed buy little (the winner's curse) and looks on more seeds may buy more.

For random distinct candidates of each prompt's space it records, per candidate and seed, the full sampler's loss
and few-step previews on ``--search-seeds``, and the full loss and ground-truth faithfulness on ``--heldout-seeds``.
The summary compares *proxies* (a fidelity averaged over the first S search seeds) at their charged cost:

* rho: Spearman correlation of the proxy with the held-out mean loss (per prompt, then over prompts);
* pick gain at equal spend: with C full-generation equivalents to spend, a proxy of cost c looks at m = C / c
  random candidates and picks its best; the gain is that pick's held-out loss against a random candidate's, in the
  task's direction (positive: better), averaged over 200 random subsets per prompt ("-" where m is below 1 or above
  the candidates recorded); the same for ground-truth faithfulness points (up for improve, down for attack);
* the ceiling: rho between the two halves of the held-out seeds (how reproducible the objective itself is).

Records go to ``OUT/records.jsonl`` one prompt at a time (a rerun resumes). Development prompt seeds only.

    python benchmarks/seed_transfer.py --prompt-seed 13 --n-improve 6 --n-attack 3 --out runs/seed_transfer
"""

from __future__ import annotations

import argparse
from pathlib import Path

FIDELITIES = ("steps:10%", "steps:20%", "full")
FULL_SEEDS = 2  # the full sampler on the first two search seeds only: full@4 would cost 4 a look (one pick at spend 4)
COSTS = (2, 4, 6)  # screening spend per pick, in full-generation equivalents


def candidate_record(problem, checker, prompt: str, cands, search: list[int], heldout: list[int]) -> dict:
    """Per-candidate, per-seed losses at every fidelity on the search seeds; full loss and faithfulness held out."""
    from dpo_diff.search.base import Evaluator
    from dpo_diff.world import summarize

    sign = problem.task.sign
    one_seed = Evaluator(problem, search[:1], budget=1e9)  # the one cost rule: denoiser calls over a generation's
    rec = {"cost_per_seed": {f: one_seed.cost_of(f) for f in FIDELITIES}}
    rec |= {f: (problem.candidate_losses(cands, search[:FULL_SEEDS] if f == "full" else search, f) * sign).tolist()
            for f in FIDELITIES}
    pairs = [problem.render(c) for c in cands]
    losses, imgs = problem.losses(pairs, heldout, keep_images=True)
    rec["heldout"] = (losses * sign).tolist()
    k = len(heldout)
    rec["heldout_faithful"] = [summarize(checker.score(imgs[i * k:(i + 1) * k], [prompt] * k))["all_correct"]
                               for i in range(len(cands))]
    return rec


def proxies(rec: dict) -> dict[str, list[float]]:
    """Proxy name -> per-candidate value (lower is better in the task's direction)."""
    import numpy as np

    out = {}
    for f in FIDELITIES:
        arr = np.array(rec[f])
        for s in sorted({1, 2, arr.shape[1]}):  # one seed, two, and every seed recorded at this fidelity
            if s <= arr.shape[1]:
                out[f"{f}@{s}"] = arr[:, :s].mean(1).tolist()
    return out


def pick_gain(proxy, target, m: int, rng, draws: int = 200) -> float:
    """Mean over random m-subsets of target[argmin proxy] - mean(target): what choosing by the proxy buys."""
    import numpy as np

    proxy, target = np.asarray(proxy), np.asarray(target)
    gains = []
    for _ in range(draws):
        idx = rng.choice(len(proxy), size=min(m, len(proxy)), replace=False)
        gains.append(target[idx[np.argmin(proxy[idx])]] - target[idx].mean())
    return float(np.mean(gains))


def prompt_metrics(rec: dict) -> dict[str, dict]:
    import numpy as np
    from scipy.stats import spearmanr

    held = np.array(rec["heldout"])
    target, faith = held.mean(1), np.array(rec["heldout_faithful"])
    direction = 1 if rec["task"] == "improve" else -1
    h = held.shape[1] // 2
    out = {"ceiling": {"rho": float(spearmanr(held[:, :h].mean(1), held[:, h:].mean(1)).statistic)}}
    rng = np.random.default_rng(0)
    for name, vals in proxies(rec).items():
        fid, seeds = name.rsplit("@", 1)
        row = {"rho": float(spearmanr(vals, target).statistic), "cost": rec["cost_per_seed"][fid] * int(seeds)}
        for c in COSTS:  # equal spend: a cheaper proxy looks at more candidates
            m = int(c / row["cost"] + 1e-9)
            if not 1 <= m <= len(vals):
                row[f"gain@{c}"] = row[f"faith@{c}"] = float("nan")
                continue
            row[f"gain@{c}"] = -pick_gain(vals, target, m, rng)  # positive: better held-out loss than a random pick
            # faithfulness points gained over a random pick: up for improve, down (more broken) for attack
            row[f"faith@{c}"] = -100 * pick_gain(vals, -direction * faith, m, rng)
        out[name] = row
    return out


def summarize(records: list[dict]) -> str:
    import numpy as np
    from scipy.stats import bootstrap

    lines = ["| task | proxy | cost / look | prompts | rho vs held-out | " + " | ".join(
        f"loss gain, spend {c}" for c in COSTS) + " | " + " | ".join(f"faithful pts, spend {c}" for c in COSTS)
        + " |", "|---|---|---|---|---|" + "---|" * (2 * len(COSTS))]
    for task in sorted({r["task"] for r in records}):
        per = [prompt_metrics(r) for r in records if r["task"] == task]
        for name in per[0]:
            rhos = np.array([p[name]["rho"] for p in per])
            cell = f"{rhos.mean():+.2f}"
            if len(rhos) > 1 and np.ptp(rhos) > 0:
                ci = bootstrap((rhos,), np.mean, n_resamples=2000, method="percentile",
                               random_state=np.random.default_rng(0)).confidence_interval
                cell += f" [{ci.low:+.2f}, {ci.high:+.2f}]"
            if name == "ceiling":
                lines.append(f"| {task} | held-out half vs half | - | {len(per)} | {cell} |" + " |" * (2 * len(COSTS)))
                continue
            gains = " | ".join(_mean(per, name, f"gain@{c}", "+.4f") for c in COSTS)
            faith = " | ".join(_mean(per, name, f"faith@{c}", "+.1f") for c in COSTS)
            lines.append(f"| {task} | {name} | {per[0][name]['cost']:.2f} | {len(per)} | {cell} | {gains} | {faith} |")
    return "\n".join(lines)


def _mean(per: list[dict], name: str, field: str, fmt: str) -> str:
    import numpy as np

    vals = [p[name][field] for p in per]
    return "-" if any(v != v for v in vals) else format(float(np.mean(vals)), fmt)


def select_prompts(task: str, n: int, args, backend, judge, checker, sampling) -> list:
    """Hard prompts the generator gets wrong (improve) or right (attack, large spaces), screened on seeds no
    other part of this benchmark uses."""
    from dpo_diff.problem import Problem, Task
    from dpo_diff.world import heldout_prompts, summarize
    from dpo_diff.world.spaces import world_space

    out = []
    for prompt in heldout_prompts("hard", 40 * max(n, 1), seed=args.prompt_seed, pool="v1"):
        if len(out) >= n:
            break
        space = world_space(prompt, task)
        if space.is_trivial or (task == "attack" and space.num_candidates < args.min_candidates):
            continue
        problem = Problem(space, Task(task), backend, judge, sampling)
        _, imgs = problem.losses([space.render(space.default)], args.screen_seeds, keep_images=True)
        rate = summarize(checker.score(imgs, [prompt] * len(args.screen_seeds)))["all_correct"]
        if (rate <= 0.5) if task == "improve" else (rate >= 0.5):
            out.append((prompt, problem))
    return out


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.files import append_jsonl, read_jsonl
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import SamplingConfig
    from dpo_diff.search.evolution import distinct_random
    from dpo_diff.seeding import rng as make_rng
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, judge_path, load_checker

    torch.set_num_threads(args.threads)
    path = Path(args.out) / "records.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["task"], r["prompt"]) for r in read_jsonl(path, what="record").records} if path.exists() else set()
    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judge = ClipJudge.from_pretrained(str(judge_path()))
    checker = load_checker()
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE, batch_size=args.batch_size)
    for task in args.tasks:
        n = args.n_improve if task == "improve" else args.n_attack
        for prompt, problem in select_prompts(task, n, args, backend, judge, checker, sampling):
            if (task, prompt) in done:
                continue
            cands = distinct_random(problem.space.sizes, args.candidates, make_rng(0, "seed-transfer", prompt))
            rec = {"task": task, "prompt": prompt, "prompt_seed": args.prompt_seed, "steps": args.steps,
                   "search_seeds": args.search_seeds, "heldout_seeds": args.heldout_seeds,
                   "candidates": [list(c) for c in cands],
                   **candidate_record(problem, checker, prompt, cands, args.search_seeds, args.heldout_seeds)}
            append_jsonl(path, rec)
            print(f"{task} {prompt!r}: {len(cands)} candidates", flush=True)
    return list(read_jsonl(path, what="record").records)


def main(argv: list[str] | None = None) -> int:
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world.prompts import DEV_PROMPT_SEEDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-seed", type=int, default=13, help="a development prompt seed (2-999, pool v1)")
    p.add_argument("--tasks", type=lambda s: s.split(","), default=["improve", "attack"])
    p.add_argument("--n-improve", type=int, default=6)
    p.add_argument("--n-attack", type=int, default=3)
    p.add_argument("--min-candidates", type=int, default=4000, help="attack spaces at least this large")
    p.add_argument("--candidates", type=int, default=64, help="random candidates per prompt")
    p.add_argument("--search-seeds", type=lambda s: list(parse_seeds(s)), default=[0, 1, 2, 3])
    p.add_argument("--heldout-seeds", type=lambda s: list(parse_seeds(s)), default=list(range(100, 108)))
    p.add_argument("--screen-seeds", type=lambda s: list(parse_seeds(s)), default=[10, 11])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--out", default="runs/seed_transfer")
    args = p.parse_args(argv)
    if args.prompt_seed not in DEV_PROMPT_SEEDS:
        p.error(f"--prompt-seed {args.prompt_seed} is not a development prompt seed (2-999); evaluation seeds are "
                f"never used to choose a method")
    overlap = set(args.search_seeds) & set(args.heldout_seeds) | set(args.screen_seeds) & set(args.heldout_seeds)
    if overlap:
        p.error(f"--heldout-seeds must not overlap the search or screening seeds (both have {sorted(overlap)})")
    if len(args.heldout_seeds) < 2:
        p.error("--heldout-seeds needs at least 2 seeds (the ceiling compares two halves)")
    from dpo_diff.files import read_jsonl

    path = Path(args.out) / "records.jsonl"
    records = list(read_jsonl(path, what="record").records) if args.summary_only else run(args)
    if not records:
        p.error(f"no records in {path}")
    table = summarize(records)
    (Path(args.out) / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
