"""Does the shortcut text gradient carry information about which word to change? (shapes world, dev prompts)

GPO (the paper's gradient search) can only beat random search if its signal ranks candidates the way the exact
objective does. This script takes every *single-word change* of the user prompt (the neighbours of the user's corner
of the search space) and compares three rankings of them, per prompt:

* **exact**: the full sampler's judge loss, averaged over the search seeds (what the searches are charged for);
* **shortcut**: the shortcut loss at the neighbour's one-hot corner (k no-grad steps, one grad step, x0 jump), the
  objective GPO actually descends, evaluated without gradient;
* **gradient**: the first-order prediction ``g[slot, option] - g[slot, user option]`` of the shortcut loss's
  gradient with respect to the mixture weights, taken at the user's corner and at GPO's starting mixture
  (softmax of logits ``[1, 0, ...]``).

It prints Spearman correlations (per prompt, then mean and a bootstrap 95% interval over prompts) between them, and
where the gradient's favourite change ranks among the exact ones (0 = the best change, 1 = the worst; a blind
guess averages 0.5). Signs follow the task: for *attack* every quantity is the negated loss, so "better" always means
lower. Development prompts only (``--pool v1``); evaluation prompts are never used to choose methods.

    python benchmarks/gradient_signal.py --prompt-seed 7 --n 6 --tasks improve,attack --out runs/gradient_signal
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def neighbours(space) -> list[tuple[int, ...]]:
    """Every candidate that differs from the user's default in exactly one slot."""
    base = list(space.default)
    out = []
    for s, slot in enumerate(space.slots):
        for o in range(slot.size):
            if o != base[s]:
                out.append(tuple(base[:s] + [o] + base[s + 1:]))
    return out


def one_hot(space, candidate) -> torch.Tensor:
    import torch

    w = torch.zeros(len(space.slots), max(space.sizes))
    w[torch.arange(len(candidate)), torch.tensor(candidate)] = 1.0
    return w


def shortcut_losses(problem, cands, seeds: list[int], k: int):
    import torch

    relaxed = problem.relaxation()
    with torch.no_grad():
        return [float(relaxed(one_hot(problem.space, c), seeds, start_step=k, grad_steps=1).mean()) for c in cands]


def predicted_deltas(problem, cands, seeds: list[int], k: int, at: torch.Tensor) -> list[float]:
    """First-order change of the shortcut loss from mixture ``at`` to each candidate's corner."""
    at = at.clone().requires_grad_(True)
    problem.relaxation()(at, seeds, start_step=k, grad_steps=1).mean().backward()
    g = at.grad
    return [float(((one_hot(problem.space, c) - at.detach()) * g).sum()) for c in cands]


def prompt_signal(problem, seeds: list[int], k: int) -> dict:
    from scipy.stats import spearmanr

    from dpo_diff.relax import WordMixture

    space, sign = problem.space, problem.task.sign
    cands = neighbours(space)
    exact_all = problem.candidate_losses([space.default, *cands], seeds).mean(1).tolist()
    exact = [sign * (e - exact_all[0]) for e in exact_all[1:]]
    short_all = shortcut_losses(problem, [space.default, *cands], seeds, k)
    short = [sign * (s - short_all[0]) for s in short_all[1:]]
    grad_user = [sign * d for d in predicted_deltas(problem, cands, seeds, k, one_hot(space, space.default))]
    prior = WordMixture(space.sizes).probs().detach()
    grad_prior = [sign * d for d in predicted_deltas(problem, cands, seeds, k, prior)]
    order = sorted(range(len(cands)), key=lambda i: exact[i])
    rank = {i: r / max(1, len(cands) - 1) for r, i in enumerate(order)}

    def rho(a, b) -> float:
        return float(spearmanr(a, b).statistic) if len(set(a)) > 1 and len(set(b)) > 1 else float("nan")

    return {"neighbours": len(cands), "k": k,
            "rho_shortcut_exact": rho(short, exact), "rho_grad_user_exact": rho(grad_user, exact),
            "rho_grad_user_shortcut": rho(grad_user, short), "rho_grad_prior_exact": rho(grad_prior, exact),
            "grad_user_pick_rank": rank[min(range(len(cands)), key=lambda i: grad_user[i])],
            "grad_prior_pick_rank": rank[min(range(len(cands)), key=lambda i: grad_prior[i])],
            "shortcut_pick_rank": rank[min(range(len(cands)), key=lambda i: short[i])],
            "best_exact_delta": min(exact), "exact": exact, "shortcut": short, "grad_user": grad_user}


def summarize(records: list[dict]) -> str:
    import numpy as np
    from scipy.stats import bootstrap

    keys = ("rho_shortcut_exact", "rho_grad_user_exact", "rho_grad_user_shortcut", "rho_grad_prior_exact",
            "grad_user_pick_rank", "grad_prior_pick_rank", "shortcut_pick_rank")
    lines = []
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task]
        lines.append(f"{task}: {len(rows)} prompts, {np.mean([r['neighbours'] for r in rows]):.0f} neighbours each")
        for key in keys:
            vals = np.array([r[key] for r in rows if r[key] == r[key]])
            if len(vals) < 2:
                lines.append(f"  {key:24s} n/a")
                continue
            ci = bootstrap((vals,), np.mean, n_resamples=2000, random_state=0, method="percentile").confidence_interval
            lines.append(f"  {key:24s} {vals.mean():+.3f}  [{ci.low:+.3f}, {ci.high:+.3f}]  (n={len(vals)})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, heldout_prompts, judge_path
    from dpo_diff.world.spaces import world_space

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    done = {(r["task"], r["prompt"]) for r in map(json.loads, lines)}
    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judge = ClipJudge.from_pretrained(str(judge_path()))
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE)
    seeds = list(parse_seeds(args.seeds))
    k = round(args.k_fraction * args.steps)
    for task in args.tasks:
        prompts = heldout_prompts("hard" if task == "improve" else "easy", args.n * 3, seed=args.prompt_seed)
        kept = 0
        for prompt in prompts:
            space = world_space(prompt, task)
            if kept >= args.n or space.is_trivial:
                continue
            kept += 1
            if (task, prompt) in done:
                continue
            rec = {"task": task, "prompt": prompt, **prompt_signal(Problem(space, Task(task), backend, judge,
                                                                          sampling), seeds, k)}
            with path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{task:8s} {prompt!r}: rho(shortcut, exact) {rec['rho_shortcut_exact']:+.2f}  rho(grad, exact) "
                  f"{rec['rho_grad_user_exact']:+.2f}  grad pick rank {rec['grad_user_pick_rank']:.2f}", flush=True)
    return [json.loads(line) for line in path.read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", default="v1", choices=("v1",), help="development prompts only")
    p.add_argument("--prompt-seed", type=int, default=7)
    p.add_argument("--n", type=int, default=6, help="prompts per task")
    p.add_argument("--tasks", type=lambda s: s.split(","), default=["improve", "attack"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0,1", help="search image seeds the losses are averaged over")
    p.add_argument("--k-fraction", type=float, default=0.3, help="k (no-grad steps) as a fraction of --steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/gradient_signal")
    args = p.parse_args(argv)
    records = run(args)
    print(summarize(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
