"""The landscape map: where the good answers of a prompt's space are, and which of them a search or judge finds.

Development prompts only (``--pool v1``). Per prompt and space (``antonym``: the improve task's negative-prompt
space; ``synonym``: its positive-prompt space; ``both``: the two together; ``attack`` prompts get the synonym space
under the attack task), a fixed candidate set is scored on the search seeds (the search seed and the two validation
seeds of the default re-ranking) by the judge (loss) and the ground-truth checker (all-correct, attribute accuracy):

* the user prompt, **every single change** (each option of each slot alone), pairs of the ``--pair-top`` best singles,
  and the ``--uniform`` candidates uniform random search draws with root seed 0.

Every generation is memoised per (candidate, seed) (:class:`Landscape`), so the searches then run *for real* on top
of it at budget 40 with the default re-ranking, for each root seed: uniform random search (today's default), random
search with the sparse proposal, and greedy; new candidates they ask for are generated and kept. The answers, the
judge's exhaustive choice over the fixed set (best mean loss on the search seeds), the checker's choice (best
ground truth on the search seeds: the space's honest ceiling) and the judge's best per sparsity bucket (1, 2, 3-5, 6+
changes) are then measured on held-out report seeds. Per space the summary reports each of them (all-correct,
attribute accuracy, loss, the answers' changed slots), and the fixed set by sparsity: where the gap sits (search,
judge or space).

    python benchmarks/landscape.py --prompt-seed 16 --n 8 --spaces antonym,synonym --out runs/landscape/a
    python benchmarks/landscape.py --summary-only --out runs/landscape/a     # the tables from the records

Records: ``OUT/records.jsonl``, one per (task, prompt, space), appended as each finishes (a rerun skips finished
ones); the memo of an unfinished one is saved in ``OUT/memo/`` as it grows, so a kill loses at most one batch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPACES = ("antonym", "synonym", "both")  # dpo_diff.world.spaces.WORLD_SPACE_KINDS
SEARCHES = {  # label -> search() keyword arguments (the default re-ranking is added for every one)
    "uniform random": {"method": "random"},
    "sparse random": {"method": "random", "proposal": ("sparse", 2.0)},
    "greedy": {"method": "greedy"},
    "beam 3": {"method": "greedy", "greedy": {"beam": 3}},
}
BUCKETS = ("0", "1", "2", "3-5", "6+")


def bucket(changes: int) -> str:
    return "0" if changes == 0 else "1" if changes == 1 else "2" if changes == 2 else "3-5" if changes <= 5 else "6+"


class Landscape:
    """A problem (the interface searches use) over a real :class:`~dpo_diff.problem.Problem` that memoises every
    (candidate, seed) generation with its judge loss and the checker's reading, so the fixed set and every search
    share generations. ``save`` is called with the new rows after each batch (the on-disk memo)."""

    def __init__(self, problem, score, memo: dict | None = None, save=None) -> None:
        self.problem, self.score, self.save = problem, score, save
        self.space, self.task, self.sampling = problem.space, problem.task, problem.sampling
        self.constraint = None
        self.memo: dict[tuple[tuple[int, ...], int], tuple[float, float, float]] = dict(memo or {})

    @property
    def user_prompt(self) -> str:
        return self.space.prompt

    def render(self, candidate):
        return self.space.render(candidate)

    def calls_for(self, steps=None) -> int:
        return self.problem.calls_for(steps)

    def fill(self, candidates: Sequence[tuple[int, ...]], seeds: Sequence[int]) -> None:
        """Generate what the memo lacks, one batch per group of candidates missing the same seeds."""
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for c in dict.fromkeys(tuple(c) for c in candidates):
            missing = tuple(s for s in seeds if (c, s) not in self.memo)
            if missing:
                groups.setdefault(missing, []).append(c)
        for missing, cands in groups.items():
            losses, images = self.problem.losses([self.render(c) for c in cands], list(missing), keep_images=True)
            readings = self.score(images)  # [(all_correct, attribute_accuracy)] per image, pair-major
            new = {}
            for i, c in enumerate(cands):
                for j, s in enumerate(missing):
                    ok, acc = readings[i * len(missing) + j]
                    new[(c, s)] = (float(losses[i, j]), float(ok), float(acc))
            self.memo.update(new)
            if self.save:
                self.save(new)

    def candidate_losses(self, candidates, seeds, fidelity="full"):
        import torch

        if fidelity not in ("full", None) and str(fidelity) != "full":
            raise ValueError("the landscape scores full generations only")
        self.fill(candidates, seeds)
        return torch.tensor([[self.memo[(tuple(c), s)][0] for s in seeds] for c in candidates])

    def mean(self, candidate, seeds: Sequence[int], field: int) -> float:
        """Mean over ``seeds`` of the loss (0), all-correct (1) or attribute accuracy (2)."""
        self.fill([candidate], seeds)
        return statistics.mean(self.memo[(tuple(candidate), s)][field] for s in seeds)


def fixed_set(land: Landscape, seeds: Sequence[int], pair_top: int, n_uniform: int) -> list[tuple[int, ...]]:
    """The user prompt, every single change, pairs of the best singles (mean loss on ``seeds``) and uniform random
    search's own draws for root 0, all scored on ``seeds``."""
    from dpo_diff.search.greedy import single_changes
    from dpo_diff.search.proposal import UNIFORM
    from dpo_diff.seeding import rng as make_rng

    sizes = land.space.sizes
    base = [land.space.default, *single_changes(sizes)]
    land.fill(base, seeds)
    sign = land.task.objective
    ranked = sorted(base[1:], key=lambda c: sign(land.mean(c, seeds, 0)))[:pair_top]
    pairs = [tuple(max(x, y) for x, y in zip(a, b)) for a, b in itertools.combinations(ranked, 2)
             if not any(x and y for x, y in zip(a, b))]
    uniform = UNIFORM.distinct(sizes, n_uniform, make_rng(0, "random"))
    everything = list(dict.fromkeys(base + pairs + uniform))
    land.fill(everything, seeds)
    return everything


def run_searches(land: Landscape, roots: Sequence[int], budget: float) -> dict[str, list[tuple[int, ...]]]:
    """Each search's answer per root (search seed 0, re-ranking on 1 and 2, as the default): the user prompt where
    nothing beat it on the seeds the answer was chosen on (as the robustness benchmark keeps it)."""
    from dpo_diff.search.api import search
    from dpo_diff.search.greedy import GreedyConfig
    from dpo_diff.search.proposal import Proposal
    from dpo_diff.search.selection import SelectionConfig

    out: dict[str, list[tuple[int, ...]]] = {}
    for label, kw in SEARCHES.items():
        kw = dict(kw)
        if "proposal" in kw:
            kw["proposal"] = Proposal(*kw["proposal"])
        if "greedy" in kw:
            kw["greedy"] = GreedyConfig(**kw["greedy"])
        answers = []
        for root in roots:
            result = search(land, budget=budget, seeds=(0,), seed=root,
                            selection=SelectionConfig(4, (1, 2)), **kw)
            answers.append(kept_answer(land, result))
        out[label] = answers
    return out


def kept_answer(land: Landscape, result) -> tuple[int, ...]:
    rows = result.extra.get("selection", {}).get("candidates")
    seeds = (0, 1, 2) if rows else (0,)
    best, user = result.best.candidate, land.space.default
    sign = land.task.objective
    return best if sign(land.mean(best, seeds, 0)) < sign(land.mean(user, seeds, 0)) else user


def choices(land: Landscape, cands: Sequence[tuple[int, ...]], seeds: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The judge's exhaustive choice, the checker's choice and the judge's best per sparsity bucket, on ``seeds``."""
    sign = land.task.objective
    gt_sign = 1 if land.task.name == "improve" else -1  # improve: more faithful is better; attack: less
    loss = {c: sign(land.mean(c, seeds, 0)) for c in cands}
    out = {"judge exhaustive": min(cands, key=loss.__getitem__),
           "checker's choice": min(cands, key=lambda c: (-gt_sign * land.mean(c, seeds, 1),
                                                         -gt_sign * land.mean(c, seeds, 2), loss[c]))}
    for b in BUCKETS[1:]:
        inside = [c for c in cands if bucket(changed(c)) == b]
        if inside:
            out[f"judge best, {b} changes"] = min(inside, key=loss.__getitem__)
    return out


def changed(candidate: Sequence[int]) -> int:
    from dpo_diff.search.proposal import num_changed

    return num_changed(candidate)


def landscape_record(land: Landscape, args: argparse.Namespace) -> dict[str, Any]:
    """Everything about one (prompt, space): the fixed set by sparsity, and every choice on the report seeds."""
    seeds, report = (0, 1, 2), list(args.report)
    cands = fixed_set(land, seeds, args.pair_top, args.uniform)
    picks: dict[str, list[tuple[int, ...]]] = {"user": [land.space.default]}
    picks.update(run_searches(land, args.roots, args.budget))
    picks.update({k: [v] for k, v in choices(land, cands, seeds).items()})
    land.fill([c for cs in picks.values() for c in cs], report)

    def measured(c):
        return {"candidate": list(c), "changes": changed(c), "prompt": land.render(c).prompt,
                "negative_prompt": land.render(c).negative_prompt, "loss": land.mean(c, report, 0),
                "all_correct": land.mean(c, report, 1), "attribute_accuracy": land.mean(c, report, 2)}

    by_bucket: dict[str, dict[str, float]] = {}
    for b in BUCKETS:
        inside = [c for c in cands if bucket(changed(c)) == b]
        if inside:
            by_bucket[b] = {"n": len(inside), **{f: statistics.mean(land.mean(c, seeds, i) for c in inside)
                                                 for i, f in enumerate(("loss", "all_correct",
                                                                        "attribute_accuracy"))}}
    return {"task": land.task.name, "prompt": land.space.prompt, "space": args.space_kind,
            "sizes": list(land.space.sizes), "fixed_set": len(cands), "generations": len(land.memo),
            "by_bucket_search_seeds": by_bucket, "picks": {k: [measured(c) for c in v] for k, v in picks.items()}}


def checker_scores(checker, prompt: str):
    """``images -> [(all_correct, attribute_accuracy)]`` against ``prompt`` (the ground truth)."""
    def score(images):
        return [(r.all_correct, r.attribute_accuracy) for r in checker.score(images, [prompt] * len(images))]

    return score


def read_jsonl(path: Path) -> list[dict]:
    from dpo_diff.files import read_jsonl as read

    return list(read(path, what="landscape record").records)


def load_memo(path: Path) -> dict:
    memo = {}
    if path.is_file():
        for row in read_jsonl(path):
            memo[(tuple(row["c"]), row["s"])] = tuple(row["v"])
    return memo


def memo_saver(path: Path):
    def save(rows: dict) -> None:
        with path.open("a") as f:
            for (c, s), v in rows.items():
                f.write(json.dumps({"c": list(c), "s": s, "v": list(v)}) + "\n")

    return save


def prompts_for(task: str, args: argparse.Namespace, backend, judge, checker, sampling) -> list[str]:
    """Development prompts: improve prompts the generator gets wrong on at least half of the screening seeds; attack
    prompts (hard ones with at least ``--attack-min-candidates`` rewrites, as the registered evaluations take) it
    gets right on at least half (the robustness benchmark's screening)."""
    from dpo_diff.problem import Problem, Task
    from dpo_diff.world import heldout_prompts
    from dpo_diff.world.spaces import world_space

    sys_path_benchmarks()
    from robustness import worth_searching

    kept = []
    for prompt in heldout_prompts("hard", args.n * args.screen, seed=args.prompt_seed, pool="v1"):
        space = world_space(prompt, task)
        small = task == "attack" and space.num_candidates < args.attack_min_candidates
        if space.is_trivial or small or len(kept) >= args.n:
            continue
        if worth_searching(Problem(space, Task(task), backend, judge, sampling), checker, prompt, task,
                           [50, 51, 52, 53], 0.5):
            kept.append(prompt)
    return kept


def sys_path_benchmarks() -> None:
    import sys

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


def run(args: argparse.Namespace) -> None:
    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, judge_path, load_checker
    from dpo_diff.world.spaces import world_space

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "memo").mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    path = out / "records.jsonl"
    done = {(r["task"], r["prompt"], r["space"]) for r in read_jsonl(path)} if path.is_file() else set()
    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judge = ClipJudge.from_pretrained(str(judge_path()))
    checker = load_checker()
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE, batch_size=args.batch_size)
    for task in args.tasks:
        kinds = args.spaces if task == "improve" else ["synonym"]
        for prompt in prompts_for(task, args, backend, judge, checker, sampling):
            for kind in kinds:
                if (task, prompt, kind) in done:
                    continue
                space = world_space(prompt, task, kind)
                if space.is_trivial:
                    continue
                memo_path = out / "memo" / f"{task}-{kind}-{prompt.replace(' ', '_')}.jsonl"
                land = Landscape(Problem(space, Task(task), backend, judge, sampling), checker_scores(checker, prompt),
                                 load_memo(memo_path), memo_saver(memo_path))
                args.space_kind = kind
                rec = landscape_record(land, args)
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"[{task} {kind}] {prompt}: {rec['generations']} generations", flush=True)


def summarise(records: list[dict]) -> str:
    """Per (task, space): every pick's report-seed ground truth and loss (means over prompts; search answers
    averaged over roots first), their changed slots, and the fixed set by sparsity on the search seeds."""
    lines = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["space"]), []).append(r)
    for (task, space), rs in sorted(groups.items()):
        lines += [f"### {task}, {space} space ({len(rs)} prompts)", "",
                  "| pick | all-correct | attribute accuracy | report loss | Δ loss vs user | changes (mean) |",
                  "|---|---|---|---|---|---|"]
        for pick in dict.fromkeys(k for r in rs for k in r["picks"]):
            have = [r for r in rs if pick in r["picks"]]
            per = [{f: statistics.mean(m[f] for m in r["picks"][pick]) for f in
                    ("all_correct", "attribute_accuracy", "loss", "changes")} | {"user": r["picks"]["user"][0]["loss"]}
                   for r in have]
            mean = {f: statistics.mean(p[f] for p in per) for f in ("all_correct", "attribute_accuracy", "loss",
                                                                     "changes")}
            dl = statistics.mean(p["loss"] - p["user"] for p in per)
            n = f" ({len(have)} prompts)" if len(have) != len(rs) else ""
            lines.append(f"| {pick}{n} | {100 * mean['all_correct']:.1f}% | {100 * mean['attribute_accuracy']:.1f}% "
                         f"| {mean['loss']:.4f} | {dl:+.4f} | {mean['changes']:.1f} |")
        lines += ["", "The fixed set by sparsity (search seeds 0-2; means over candidates, then prompts):", "",
                  "| changes | candidates | all-correct | attribute accuracy | loss |", "|---|---|---|---|---|"]
        for b in BUCKETS:
            have = [r["by_bucket_search_seeds"][b] for r in rs if b in r["by_bucket_search_seeds"]]
            if have:
                lines.append(f"| {b} | {sum(h['n'] for h in have)} | "
                             f"{100 * statistics.mean(h['all_correct'] for h in have):.1f}% | "
                             f"{100 * statistics.mean(h['attribute_accuracy'] for h in have):.1f}% | "
                             f"{statistics.mean(h['loss'] for h in have):.4f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="improve", type=lambda s: s.split(","))
    p.add_argument("--spaces", default=",".join(SPACES), type=lambda s: s.split(","))
    p.add_argument("--prompt-seed", type=int, default=16, help="a development prompt seed (2-999, pool v1)")
    p.add_argument("--n", type=int, default=8, help="prompts per task")
    p.add_argument("--screen", type=int, default=5, help="screen up to N x n prompts")
    p.add_argument("--attack-min-candidates", type=int, default=4000,
                   help="attack: prompts whose synonym space has at least this many candidates (two objects)")
    p.add_argument("--pair-top", type=int, default=6, help="pairs among this many best singles")
    p.add_argument("--uniform", type=int, default=32, help="uniform random search's draws (root 0) in the set")
    p.add_argument("--roots", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--budget", type=float, default=40.0)
    p.add_argument("--report", default="100-107", type=lambda s: list(range(int(s.split("-")[0]),
                                                                            int(s.split("-")[1]) + 1)))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--out", default="runs/landscape")
    args = p.parse_args()
    from dpo_diff.world.prompts import DEV_PROMPT_SEEDS

    if args.prompt_seed not in DEV_PROMPT_SEEDS:
        p.error(f"the landscape is for development prompts only: --prompt-seed in {DEV_PROMPT_SEEDS[0]}-"
                f"{DEV_PROMPT_SEEDS[-1]}, got {args.prompt_seed}")
    unknown = [s for s in args.spaces if s not in SPACES]
    if unknown:
        p.error(f"unknown spaces {unknown}; choose from {list(SPACES)}")
    if not args.summary_only:
        run(args)
    table = summarise(read_jsonl(Path(args.out) / "records.jsonl"))
    print(table)
    (Path(args.out) / "summary.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
