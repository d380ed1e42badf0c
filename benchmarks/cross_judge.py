"""Cross-judge evaluation in the shapes world: searches optimized on the CLIP judge, scored by judges they never saw.

Prompts are screened as in ``benchmarks/robustness.py`` (improve: hard prompts the generator gets wrong on at least
one screening seed; attack: prompts it gets right), then ``dpo-diff bench --world`` runs every method on them once
per root seed with ``--eval-judges`` (default: the ground-truth checker and the independently trained second judge,
``clip:world:judge_b``). Each root seed's folder is a normal bench folder (``dpo-diff report`` shows the
cross-judge table); the summary gives, per method, the change of every judge's loss (answer - user prompt, report
seeds) as mean ± std across root seeds, and on how many (prompt, root) pairs the optimized judge's gain came with an
evaluator's gain.

    python benchmarks/cross_judge.py --prompt-seed 1003 --n 3 --roots 0,1,2 --out runs/cross_judge_1003
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # robustness.py: the same prompt screening


def screen_prompts(args: argparse.Namespace) -> list[str]:
    """The first ``n`` prompts of the pool worth searching (see ``robustness.worth_searching``)."""
    from robustness import worth_searching

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, heldout_prompts, judge_path, load_checker
    from dpo_diff.world.spaces import world_space

    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judge, checker = ClipJudge.from_pretrained(str(judge_path())), load_checker()
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE)
    kind = "hard" if args.task == "improve" else "easy"
    kept = []
    for prompt in heldout_prompts(kind, args.n * args.screen, seed=args.prompt_seed, pool=args.pool):
        space = world_space(prompt, args.task)
        if space.is_trivial:
            continue
        problem = Problem(space, Task(args.task), backend, judge, sampling)
        if worth_searching(problem, checker, prompt, args.task, list(parse_seeds(args.screen_seeds))):
            kept.append(prompt)
        if len(kept) == args.n:
            break
    return kept


def run(args: argparse.Namespace) -> None:
    from dpo_diff.bench.config import BenchConfig
    from dpo_diff.bench.runner import run_bench
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world import RECOMMENDED_GUIDANCE
    from dpo_diff.world.spaces import PAPER_KINDS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts_file = out / "prompts.json"
    if not prompts_file.is_file():
        prompts_file.write_text(json.dumps(screen_prompts(args), indent=2) + "\n")
    print(f"prompts: {json.loads(prompts_file.read_text())}", flush=True)
    for root in args.roots:
        cfg = BenchConfig(task=args.task, methods=tuple(args.methods), budget=args.budget, seeds=(0,),
                          report_seeds=parse_seeds(args.report_seeds), seed=root, world=True, steps=args.steps,
                          guidance=RECOMMENDED_GUIDANCE, eval_judges=tuple(args.eval_judges), device="cpu",
                          dtype="fp32", batch_size=args.batch_size,
                          space_kind=PAPER_KINDS[args.task])  # as registered and screened, not bench's default
        run_bench(cfg, str(prompts_file), out / f"root{root}", argv=list(sys.argv),
                  log=lambda line: print(line, flush=True))


def summarise(out: Path, roots: list[int]) -> str:
    """Per method: each judge's Δ (answer - user, report seeds; mean over prompts) as mean ± std across roots, and
    how often the optimized judge's gain came with each evaluator's gain."""
    from dpo_diff.bench.cross_judge import _label
    from dpo_diff.bench.report import analyse

    per: dict[tuple[str, str], list[float]] = {}
    carried: dict[tuple[str, str], list[int]] = {}
    task = ""
    for root in roots:
        data = analyse(out / f"root{root}")
        task, sign = data.task, data.sign
        for m in data.methods:
            recs = [data.records[(p, m)] for p in data.prompts]
            opt = [statistics.mean(r["report_losses"]) - statistics.mean(r["user_report_losses"]) for r in recs]
            per.setdefault((m, "optimized"), []).append(statistics.mean(opt))
            for name in recs[0].get("judges", {}):
                if recs[0]["judges"][name]["role"] != "eval":
                    continue
                d = [statistics.mean(r["judges"][name]["best"]) - statistics.mean(r["judges"][name]["user"])
                     for r in recs]
                per.setdefault((m, name), []).append(statistics.mean(d))
                both = carried.setdefault((m, name), [0, 0])
                for o, e in zip(opt, d):
                    if sign * o < 0:  # the optimized judge improved on this prompt
                        both[1] += 1
                        both[0] += int(sign * e < 0)
    names = list(dict.fromkeys(n for _, n in per))
    methods = list(dict.fromkeys(m for m, _ in per))

    def cell(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):+.4f} ± {sd:.4f}"

    head = ["method", *[("Δ CLIP judge (optimized)" if n == "optimized" else f"Δ {_label(n)}") for n in names]]
    head += [f"gain carried to {_label(n)}" for n in names if n != "optimized"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m, *[cell(per[(m, n)]) for n in names]]
        row += [f"{carried[(m, n)][0]}/{carried[(m, n)][1]}" for n in names if n != "optimized"]
        lines.append("| " + " | ".join(row) + " |")
    goal = "negative" if task == "improve" else "positive"
    lines += ["", f"Δ: answer - user prompt of each judge's loss on the report seeds, mean over prompts, then mean ± "
              f"std across {len(roots)} root seeds ({goal} is a gain for {task}; the checker's loss is 1 - all "
              f"correct). Gain carried: (prompt, root) pairs where the optimized judge's loss improved and the "
              f"evaluator's improved too, of those where the optimized one improved."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="improve", choices=("improve", "attack"))
    p.add_argument("--pool", default="eval", choices=("v1", "eval", "eval2"))
    p.add_argument("--prompt-seed", type=int, default=1003)
    p.add_argument("--n", type=int, default=3, help="prompts kept after screening")
    p.add_argument("--screen", type=int, default=10, help="candidates screened per kept prompt")
    p.add_argument("--screen-seeds", default="9000,9001")
    p.add_argument("--report-seeds", default="9002-9009")
    p.add_argument("--methods", default="user,random,hybrid", type=lambda s: s.split(","))
    p.add_argument("--roots", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--budget", type=float, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-judges", default="checker,clip:world:judge_b", type=lambda s: s.split(","))
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--out", default="runs/cross_judge")
    args = p.parse_args(argv)
    if not args.summary_only:
        run(args)
    text = summarise(Path(args.out), args.roots)
    (Path(args.out) / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
