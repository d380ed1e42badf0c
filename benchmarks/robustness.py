"""Robustness of the searches, measured against the shapes world's ground truth.

For each (prompt, method, selection variant, root seed, thread count) the search runs at one budget; the user prompt
and the answer are then judged on held-out report seeds by the CLIP judge (loss) and the ground-truth checker
(faithfulness: every attribute right). Selection variants (issue: seed-robust selection):

* ``1seed``: search on image seed 0 (the paper's protocol);
* ``2seeds``: search on seeds 0 and 1 (every evaluation costs two generations);
* ``rerank``: search on seed 0, then re-score the best 4 candidates on validation seeds 1 and 2 (8 generations
  reserved from the same budget).

A method spec ``NAME+select=PRESET`` (with ``--variants rerank``) adds the selection judges of
``SELECT_PRESETS[PRESET]``: the re-ranked answer must be preferred to the user prompt by every one of them, else the
user prompt is kept (records say ``select``, ``kept_user`` and each judge's ``vetoes``).

Records go to ``OUT/records.jsonl`` one job at a time (a rerun resumes; a bad line is skipped with a warning).
The summary gives, per (task, method, variant), Δloss and Δfaithfulness as mean ± std across root seeds, and paired
comparisons against random search over prompts (root seeds averaged first): bootstrap 95% intervals, Wilcoxon
signed-rank p-values with a Benjamini-Hochberg correction, ties counted. With several thread counts it also reports
how often the answer is the same under each.

    python benchmarks/robustness.py --pool v1 --prompt-seed 2 --n 8 --methods hybrid --variants 1seed,2seeds,rerank \
        --out runs/robust_select                   # development: choose the selection default
    python benchmarks/robustness.py --pool eval --prompt-seed 1000 --n 8 --out runs/robust_eval   # evaluation
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

VARIANTS = {
    "1seed": {"seeds": (0,), "rerank_top": 0, "validation_seeds": ()},
    "2seeds": {"seeds": (0, 1), "rerank_top": 0, "validation_seeds": ()},
    "rerank": {"seeds": (0,), "rerank_top": 4, "validation_seeds": (1, 2)},
}
KEY = ("task", "prompt", "method", "variant", "root", "threads")
# Selection judges of the method-spec suffix +select=NAME (the agreement rule, dpo_diff.search.selection): the
# re-ranking's answer must be preferred to the user prompt by every one of them. Needs the rerank variant.
SELECT_PRESETS = {"judge_b": ("clip:world:judge_b",), "both": ("clip:world:judge", "clip:world:judge_b"),
                  "vqa": ("vqa:world:vqa",)}


def read_records(path: Path) -> list[dict]:
    """Every readable record (a bad line is skipped with a warning naming it, as for bench results)."""
    from dpo_diff.files import read_jsonl

    return list(read_jsonl(path, what="robustness record").records)


def user_baseline(problem, checker, prompt: str, seeds: list[int], report: list[int]) -> dict:
    from dpo_diff.world import summarize

    losses, imgs = problem.losses([problem.space.render(problem.space.default)], seeds + report, keep_images=True)
    truth = summarize(checker.score(imgs[len(seeds):], [prompt] * len(report)))
    return {"losses": dict(zip(seeds + report, losses[0].tolist())), "faithful": truth["all_correct"],
            "attribute_accuracy": truth["attribute_accuracy"]}


def method_spec(spec: str) -> tuple[str, dict]:
    """``NAME[+MOD...]`` -> (search method, extra search() settings): ``+sparse`` (the sparse proposal, mean 2),
    ``+sparseM`` (mean M), ``+beamB`` (greedy's beam width), ``+both`` (improve: the space of synonym swaps and
    antonym negatives together, as ``space``), ``+select=NAME`` (the selection judges of ``SELECT_PRESETS[NAME]``,
    as ``select``). E.g. ``random+sparse``, ``greedy+beam3``, ``greedy+both``, ``random+select=judge_b``."""
    from dpo_diff.search import METHODS
    from dpo_diff.search.greedy import GreedyConfig
    from dpo_diff.search.proposal import Proposal

    name, *mods = spec.split("+")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in {spec!r}; choose from {METHODS}")
    extra: dict = {}
    for mod in mods:
        if mod.startswith("sparse"):
            extra["proposal"] = Proposal("sparse", float(mod[6:] or 2.0))
        elif mod.startswith("beam") and name == "greedy":
            extra["greedy"] = GreedyConfig(beam=int(mod[4:]))
        elif mod == "both":
            extra["space"] = "both"
        elif mod.startswith("select="):
            if mod[7:] not in SELECT_PRESETS:
                raise ValueError(f"unknown selection preset {mod[7:]!r} in {spec!r}; choose from "
                                 f"{', '.join(SELECT_PRESETS)}")
            extra["select"] = mod[7:]
        else:
            raise ValueError(f"unknown modifier {mod!r} in {spec!r}: use +sparse[MEAN], +both, +select=NAME or, "
                             f"for greedy, +beamB")
    return name, extra


def worth_searching(problem, checker, prompt: str, task: str, seeds: list[int], attack_min_rate: float = 0.75) -> bool:
    """The paper's protocol, with ground truth: improve prompts the generator gets wrong (at most half right on the
    screening seeds), attack prompts it gets right (at least ``attack_min_rate``, 3 in 4 by default); screened on
    seeds no result uses."""
    from dpo_diff.world import summarize

    _, imgs = problem.losses([problem.space.render(problem.space.default)], seeds, keep_images=True)
    rate = summarize(checker.score(imgs, [prompt] * len(seeds)))["all_correct"]
    return rate <= 0.5 if task == "improve" else rate >= attack_min_rate


def screened(path: Path, key: dict, screen) -> bool:
    """``screen()``'s verdict for ``key`` (task, prompt, seeds, rule, steps), computed once and kept in ``path`` (one
    JSON line per prompt), so that a resumed run re-reads its prompt list instead of regenerating every screening
    image; a line cut short by a kill is skipped with a warning and screened again."""
    for r in read_records(path) if path.is_file() else ():
        if {k: r.get(k) for k in key} == key and isinstance(r.get("worth"), bool):
            return r["worth"]
    from dpo_diff.files import append_jsonl

    worth = bool(screen())
    append_jsonl(path, {**key, "worth": worth})  # ends a line cut short by a kill first
    return worth


def method_settings(args: argparse.Namespace) -> dict:
    """The multi-fidelity and model-based searches' settings from the command line (saved in every record)."""
    from dpo_diff.search.model_based import TPEConfig
    from dpo_diff.search.multi_fidelity import MultiFidelityConfig

    mf = MultiFidelityConfig(**{k: v for k, v in (("ladder", args.mf_ladder), ("screen_share", args.mf_share),
                                                   ("rounds", args.mf_rounds)) if v is not None})
    tpe = TPEConfig(**{k: v for k, v in (("ladder", args.tpe_ladder), ("keep", args.tpe_keep)) if v is not None})
    return {"mf": mf, "tpe": tpe}


def run_job(problem, checker, prompt: str, method: str, variant: str, root: int, report: list[int], base: dict,
            budget: float, settings: dict | None = None) -> dict:
    from dpo_diff.search.api import search
    from dpo_diff.search.selection import SelectionConfig
    from dpo_diff.world import summarize

    v = VARIANTS[variant]
    name, extra = method_spec(method)
    extra.pop("space", None)  # the caller built the problem on it
    preset = extra.pop("select", None)
    judges = SELECT_PRESETS[preset] if preset else ()
    if judges and not v["rerank_top"]:
        raise ValueError(f"{method}: selection judges score the re-ranking's images; run it with the rerank variant, "
                         f"not {variant}")
    selection = SelectionConfig(v["rerank_top"], v["validation_seeds"], judges=judges)
    settings = {k: c for k, c in (settings or {}).items() if k == name}  # only the method's own settings
    t0 = time.perf_counter()
    result = search(problem, method=name, budget=budget, seeds=v["seeds"], seed=root, selection=selection,
                    select_judges=loaded_select_judges(problem, judges), **settings, **extra)
    chosen = result.best
    record = result.extra.get("selection", {})
    rows = record.get("candidates")
    judged = list(v["seeds"]) + list(v["validation_seeds"] if rows else ())
    best_mean = rows[0]["mean_loss"] if rows else sum(chosen.losses) / len(chosen.losses)
    user_mean = sum(base["losses"][s] for s in judged) / len(judged)
    space = problem.space
    pair = space.render(chosen.candidate)
    if rows and record.get("select_judges"):
        if record["kept_user"]:  # the selection judges' agreement decides, not the search judge
            pair = space.render(space.default)
    elif problem.task.objective(best_mean) >= problem.task.objective(user_mean):
        pair = space.render(space.default)  # nothing beat the user prompt where the search could see: keep it
    kept = chosen.candidate if pair != space.render(space.default) else space.default
    losses, imgs = problem.losses([pair], report, keep_images=True)
    truth = summarize(checker.score(imgs, [prompt] * len(report)))
    return {"best_prompt": pair.prompt, "best_negative_prompt": pair.negative_prompt,
            "user_report_loss": sum(base["losses"][s] for s in report) / len(report),
            "best_report_loss": float(losses.mean()), "user_faithful": base["faithful"],
            "best_faithful": truth["all_correct"], "user_attribute_accuracy": base["attribute_accuracy"],
            "best_attribute_accuracy": truth["attribute_accuracy"], "best_changes": sum(1 for c in kept if c),
            "cost": result.cost, "seconds": time.perf_counter() - t0, "timings": result.timings,
            "gpo_skipped": result.extra.get("gpo_skipped", ""), "mf_skipped": result.extra.get("mf_skipped", ""),
            "settings": {**{k: c.to_dict() for k, c in settings.items()},
                         **{k: c.to_dict() for k, c in extra.items()}},
            **selection_fields(preset, record)}


def loaded_select_judges(problem, judges: tuple[str, ...]) -> dict:
    """``{spec: judge}`` for ``judges``, loaded once per process on the search judge's device (shared registry)."""
    if not judges:
        return {}
    from dpo_diff.judges.evaluate import load_eval_judges
    from dpo_diff.judges.spec import shared_registry

    return load_eval_judges(judges, shared_registry(str(getattr(problem.judge, "device", "cpu"))))


def selection_fields(preset: str | None, record: dict) -> dict:
    """A record's selection-judge fields (none without a preset, so older records and summaries stay as they were):
    the preset, its judges, whether the user prompt was kept and how many re-ranked candidates each judge vetoed
    (empty when re-ranking was skipped and the search judge chose alone)."""
    if not preset:
        return {}
    ran = bool(record.get("select_judges") and record.get("candidates"))
    return {"select": preset, "select_judges": list(SELECT_PRESETS[preset]),
            "kept_user": bool(record["kept_user"]) if ran else None, "vetoes": record["vetoes"] if ran else {},
            "select_calls": record.get("select_calls", 0)}


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.files import append_jsonl
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, heldout_prompts, judge_path, load_checker
    from dpo_diff.world.spaces import world_space

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    done = {tuple(r[k] for k in KEY) for r in read_records(path)}
    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judge = ClipJudge.from_pretrained(str(judge_path()))
    checker = load_checker()
    report = list(parse_seeds(args.report_seeds))
    screen_seeds = list(parse_seeds(args.screen_seeds))
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE, batch_size=args.batch_size)
    settings = method_settings(args)
    needed = sorted({s for v in args.variants for s in (*VARIANTS[v]["seeds"], *VARIANTS[v]["validation_seeds"])})
    torch.set_num_threads(args.threads[0])  # screening at the run's thread count, whether it starts or resumes
    for task in args.tasks:
        kind = "hard" if task == "improve" else args.attack_kind
        prompts = heldout_prompts(kind, args.n * args.screen, seed=args.prompt_seed, pool=args.pool)
        kept = 0
        for i, prompt in enumerate(prompts):
            space = world_space(prompt, task)
            small = task == "attack" and space.num_candidates < args.min_candidates
            if space.is_trivial or kept >= args.n or small:
                continue
            problem = Problem(space, Task(task), backend, judge, sampling)
            key = {"task": task, "prompt": prompt, "seeds": screen_seeds, "attack_min_rate": args.attack_min_rate,
                   "steps": args.steps}
            if args.screen > 1 and not screened(out / "screening.jsonl", key, lambda: worth_searching(
                    problem, checker, prompt, task, screen_seeds, args.attack_min_rate)):
                continue
            kept += 1
            base = None
            for method in args.methods:
                for variant, budget in [(v, b) for v in args.variants for b in args.budgets]:
                    label = variant if len(args.budgets) == 1 else f"{variant}@{budget:g}"
                    for root in args.roots:
                        for threads in args.threads:
                            key = (task, prompt, method, label, root, threads)
                            if key in done:
                                continue
                            torch.set_num_threads(threads)
                            if base is None:
                                base = user_baseline(problem, checker, prompt, needed, report)
                            rec = dict(zip(KEY, key))
                            rec.update(run_job(problem_for(problem, method), checker, prompt, method, variant, root,
                                               report, base, budget, settings))
                            rec["budget"] = budget
                            append_jsonl(path, rec)  # one write; a line cut short by a kill is ended first
                            print(f"[{task} {i + 1}/{len(prompts)} {method} {label} root {root} t{threads}] "
                                  f"loss {rec['user_report_loss']:.4f} -> {rec['best_report_loss']:.4f}  faithful "
                                  f"{rec['user_faithful']:.2f} -> {rec['best_faithful']:.2f} "
                                  f"({rec['seconds']:.0f} s)", flush=True)
    return read_records(path)


def problem_for(problem, spec: str):
    """``problem`` on the space ``spec`` asks for (``+both``), else ``problem`` itself; the user prompt is the same."""
    from dataclasses import replace

    from dpo_diff.world.spaces import world_space

    kind = method_spec(spec)[1].get("space")
    return replace(problem, space=world_space(problem.space.prompt, problem.task.name, kind)) if kind else problem


def _cell(values) -> str:
    import statistics

    if len(values) < 2:
        return f"{values[0]:+.4f}" if values else "-"
    return f"{statistics.mean(values):+.4f} ± {statistics.stdev(values):.4f}"


def summarise(records: list[dict], pairs: list[tuple[str, str, str, str]] = ()) -> str:
    """Mean ± std across root seeds of the per-root means over prompts; paired tests against random."""
    import statistics
    from collections import defaultdict

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["method"], r["variant"])].append(r)
    lines = ["| task | method | variant | prompts | roots x threads | Δ report loss | Δ faithful (points) | "
             "Δ attribute accuracy (points) | changes (median) | cost | seconds / search |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, method, variant), rs in sorted(groups.items()):
        by_run: dict[tuple, list[dict]] = defaultdict(list)
        for r in rs:
            by_run[(r["root"], r["threads"])].append(r)
        dl = [statistics.mean(r["best_report_loss"] - r["user_report_loss"] for r in v) for v in by_run.values()]
        df = [100 * statistics.mean(r["best_faithful"] - r["user_faithful"] for r in v) for v in by_run.values()]
        da = [100 * statistics.mean(r["best_attribute_accuracy"] - r["user_attribute_accuracy"] for r in v)
              for v in by_run.values() if all("best_attribute_accuracy" in r for r in v)]
        changes = [r["best_changes"] for r in rs if "best_changes" in r]
        n_prompts = len({r["prompt"] for r in rs})
        cost, secs = statistics.mean(r["cost"] for r in rs), statistics.mean(r["seconds"] for r in rs)
        lines.append(f"| {task} | {method} | {variant} | {n_prompts} | {len(by_run)} | {_cell(dl)} | "
                     f"{_cell(df)} | {_cell(da)} | {statistics.median(changes) if changes else '-'} | {cost:.1f} | "
                     f"{secs:.1f} |")
    lines += ["", *paired_lines(records, pairs), "", *user_lines(records), "", *time_matched_lines(records), "",
              *gaming_lines(records), "", *sparsity_lines(records), "", *selection_lines(records), "",
              *thread_lines(records)]
    return "\n".join(lines)


def selection_lines(records: list[dict]) -> list[str]:
    """What the selection judges (``+select=PRESET``) cost and decided, per (task, method, variant) that has them:
    charged generations (the same budget as without them), selection-judge calls, the user prompt's validation
    generations the agreement rule adds (uncharged baseline), how often the user prompt was kept, and each judge's
    vetoes of re-ranked candidates. Nothing for runs without selection judges."""
    import statistics
    from collections import defaultdict

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("select"):
            groups[(r["task"], r["method"], r["variant"])].append(r)
    if not groups:
        return []
    lines = ["Selection judges (per search; kept: the user prompt kept because a selection judge vetoed every "
             "re-ranked candidate):", "", "| task | method | variant | searches | generations charged | "
             "selection-judge calls | kept the user prompt | vetoes per search |", "|---|---|---|---|---|---|---|---|"]
    for key, rs in sorted(groups.items()):
        ran = [r for r in rs if r.get("kept_user") is not None]
        vetoes = defaultdict(list)
        for r in ran:
            for judge, n in r["vetoes"].items():
                vetoes[judge].append(n)
        veto = "; ".join(f"{j} {statistics.mean(v):.2f}" for j, v in sorted(vetoes.items())) or "-"
        lines.append(f"| {' | '.join(key)} | {len(rs)} | {statistics.mean(r['cost'] for r in rs):.1f} | "
                     f"{statistics.mean(r.get('select_calls', 0) for r in rs):.1f} | "
                     f"{sum(bool(r['kept_user']) for r in ran)} of {len(ran)} | {veto} |")
    return lines


def gaming_lines(records: list[dict]) -> list[str]:
    """Does the ground truth follow the judge? Per (task, method, variant), over prompts (roots averaged): of the
    prompts where the answer moved the judge's loss the task's way, how often faithfulness moved the task's way too,
    could not (the user prompt already fully faithful for improve, fully broken for attack), stayed although it could
    move, or moved against it. The last two are judge gaming: a better loss without a better ground truth."""
    from collections import defaultdict

    loss, faith = _per_prompt(records, "best_report_loss"), _per_prompt(records, "best_faithful")
    user_l, user_f = _per_prompt(records, "user_report_loss"), _per_prompt(records, "user_faithful")
    lines = ["Ground truth against the judge (prompts, roots averaged; judge gain: the loss moved the task's way; "
             "gaming: unchanged with room to move, or against):", "",
             "| task | method | variant | prompts | judge gain | ground truth gains too | no room to move | "
             "unchanged (gaming) | against (gaming) |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(loss):
        sign = 1 if key[0] == "improve" else -1
        counts: dict[str, int] = defaultdict(int)
        for p, value in loss[key].items():
            if sign * (user_l[key][p] - value) <= 0:
                continue
            df, saturated = sign * (faith[key][p] - user_f[key][p]), user_f[key][p] == (1.0 if sign > 0 else 0.0)
            counts["gain"] += 1
            counts["also" if df > 0 else "against" if df < 0 else "full" if saturated else "same"] += 1
        lines.append(f"| {' | '.join(key)} | {len(loss[key])} | {counts['gain']} | {counts['also']} | "
                     f"{counts['full']} | {counts['same']} | {counts['against']} |")
    return lines


def _per_prompt(records: list[dict], field: str) -> dict[tuple, dict[str, float]]:
    """(task, method, variant) -> prompt -> value averaged over roots and threads."""
    import statistics
    from collections import defaultdict

    acc: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        acc[(r["task"], r["method"], r["variant"])][r["prompt"]].append(r[field])
    return {g: {p: statistics.mean(v) for p, v in d.items()} for g, d in acc.items()}


def paired_advantage(pp: dict[tuple, dict[str, float]], task: str, method: str, variant: str, field: str,
                     scale: float = 1.0, ref_method: str = "random", ref_variant: str | None = None):
    """``(d, ci, p)``: per-prompt advantage of ``method`` over ``ref_method`` (random search; positive: better), its
    95% bootstrap interval and Wilcoxon p-value, from :func:`_per_prompt` values of ``field``; ``None`` below 3
    common prompts."""
    import numpy as np
    from scipy import stats

    vals, ref = pp.get((task, method, variant)), pp.get((task, ref_method, ref_variant or variant))
    if not vals or not ref:
        return None
    common = sorted(set(vals) & set(ref))
    if len(common) < 3:
        return None
    sign = (1 if task == "improve" else -1) * (1 if field == "best_report_loss" else -1)
    d = np.array([sign * (ref[p] - vals[p]) * scale for p in common])
    ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                         random_state=np.random.default_rng(0)).confidence_interval
    nonzero = d[d != 0]
    return d, ci, stats.wilcoxon(nonzero).pvalue if len(nonzero) >= 3 else 1.0


SPARSITY = (("1-2", 1, 2), ("3-5", 3, 5), ("6+", 6, 10**9))


def sparsity_lines(records: list[dict]) -> list[str]:
    """Answers by how many slots they change (the user prompt kept: 0), per (task, method, variant): how many, and
    their mean Δ all-correct, Δ attribute accuracy and Δ report loss against the user prompt."""
    import statistics
    from collections import defaultdict

    have = [r for r in records if "best_changes" in r]
    if not have:
        return []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in have:
        k = r["best_changes"]
        label = "0" if k == 0 else next(name for name, lo, hi in SPARSITY if lo <= k <= hi)
        groups[(r["task"], r["method"], r["variant"], label)].append(r)
    lines = ["Answers by changed slots (0: the user prompt kept):", "",
             "| task | method | variant | changes | answers | Δ faithful (points) | Δ attribute accuracy (points) | "
             "Δ report loss |", "|---|---|---|---|---|---|---|---|"]
    for (task, method, variant, label), rs in sorted(groups.items()):
        df = 100 * statistics.mean(r["best_faithful"] - r["user_faithful"] for r in rs)
        da = 100 * statistics.mean(r["best_attribute_accuracy"] - r["user_attribute_accuracy"] for r in rs)
        dl = statistics.mean(r["best_report_loss"] - r["user_report_loss"] for r in rs)
        lines.append(f"| {task} | {method} | {variant} | {label} | {len(rs)} | {df:+.1f} | {da:+.1f} | {dl:+.4f} |")
    return lines


def user_lines(records: list[dict]) -> list[str]:
    """Each method's answers against the user prompt on the judge (report loss; positive: the answer is better for
    the task), paired over prompts with a bootstrap interval: an answer must still beat the user prompt."""
    import numpy as np
    from scipy import stats

    loss, user = _per_prompt(records, "best_report_loss"), _per_prompt(records, "user_report_loss")
    lines = []
    for key in sorted(loss):
        sign = 1 if key[0] == "improve" else -1
        d = np.array([sign * (user[key][p] - loss[key][p]) for p in sorted(loss[key])])
        if len(d) < 3:
            continue
        ci = stats.bootstrap((d,), np.mean, n_resamples=2000, method="percentile",
                             random_state=np.random.default_rng(0)).confidence_interval
        lines.append(f"- {' '.join(key[:2])} ({key[2]}) vs the user prompt, loss: advantage {d.mean():+.4f} "
                     f"[{ci.low:+.4f}, {ci.high:+.4f}] over {len(d)} prompts")
    return ["Against the user prompt (judge loss on report seeds; positive = better for the task):", ""] + lines \
        if lines else []


def paired_lines(records: list[dict], pairs=()) -> list[str]:
    """Every method against random search at the same variant (and budget), plus the ``pairs``
    ``(method, variant, ref_method, ref_variant)`` asked for (e.g. mf at budget 40 against random at 80)."""
    from scipy import stats

    out: list[tuple[str, float]] = []
    fields = [("best_report_loss", "loss", 1.0), ("best_faithful", "faithful points", 100.0)]
    if all("best_attribute_accuracy" in r for r in records):
        fields.append(("best_attribute_accuracy", "attribute accuracy points", 100.0))
    for field, unit, scale in fields:
        pp = _per_prompt(records, field)
        asked = [(t, m, v, "random", v) for t, m, v in sorted(pp) if m != "random"]
        asked += [(t, m, v, rm, rv) for t in sorted({k[0] for k in pp}) for m, v, rm, rv in pairs]
        for task, method, variant, ref_method, ref_variant in asked:
            found = paired_advantage(pp, task, method, variant, field, scale, ref_method, ref_variant)
            if found is None:
                continue
            d, ci, p = found
            vs = f"{ref_method} ({ref_variant})" if (ref_method, ref_variant) != ("random", variant) else "random"
            out.append((f"{task} {method} ({variant}) vs {vs}, {unit}: advantage {d.mean():+.4f} "
                        f"[{ci.low:+.4f}, {ci.high:+.4f}] over {len(d)} prompts; better/tie/worse "
                        f"{int((d > 0).sum())}/{int((d == 0).sum())}/{int((d < 0).sum())}; Wilcoxon p", p))
    if not out:
        return []
    adjusted = stats.false_discovery_control([p for _, p in out]) if len(out) > 1 else [out[0][1]]
    return ["Paired comparisons (positive = better than random; 95% bootstrap interval over prompts):", ""] + [
        f"- {text} = {p:.3f} (BH-adjusted {q:.3f})" for (text, p), q in zip(out, adjusted)]


def time_matched_lines(records: list[dict]) -> list[str]:
    """The wall-seconds view: per prompt, random search's report loss at the method's wall seconds, interpolated
    linearly on random's own budget curve (its runs at several budgets of the same selection variant; prompts where
    the method's seconds fall outside random's range are left out and counted). Positive: better than random at
    equal time. Wall seconds depend on the machine and its load; the cost view above does not."""
    import statistics

    import numpy as np
    from scipy import stats

    loss, secs = _per_prompt(records, "best_report_loss"), _per_prompt(records, "seconds")
    lines = []
    for task, method, variant in sorted(loss):
        base = variant.split("@")[0]
        curves = [v for (t, m, v) in loss if t == task and m == "random" and v.split("@")[0] == base]
        if method == "random" or len(curves) < 2:
            continue
        d, outside = [], 0
        sign = 1 if task == "improve" else -1
        for prompt, value in loss[(task, method, variant)].items():
            pts = sorted((secs[(task, "random", v)][prompt], loss[(task, "random", v)][prompt]) for v in curves
                         if prompt in loss[(task, "random", v)])
            t = secs[(task, method, variant)][prompt]
            if len(pts) < 2 or not pts[0][0] <= t <= pts[-1][0]:
                outside += 1
                continue
            ref = float(np.interp(t, [x for x, _ in pts], [y for _, y in pts]))
            d.append(sign * (ref - value))
        if len(d) < 3:
            continue
        arr = np.array(d)
        ci = stats.bootstrap((arr,), np.mean, n_resamples=2000, method="percentile",
                             random_state=np.random.default_rng(0)).confidence_interval
        lines.append(f"- {task} {method} ({variant}) vs random at equal wall seconds, loss: advantage "
                     f"{statistics.mean(d):+.4f} [{ci.low:+.4f}, {ci.high:+.4f}] over {len(d)} prompts "
                     f"({outside} outside random's time range)")
    if lines:
        lines.insert(0, "Equal wall seconds (random's loss interpolated on its budget curve; machine-dependent):")
        lines.insert(1, "")
    return lines


def thread_lines(records: list[dict]) -> list[str]:
    from collections import defaultdict

    answers: dict[tuple, dict[int, tuple]] = defaultdict(dict)
    for r in records:
        key = (r["task"], r["prompt"], r["method"], r["variant"], r["root"])
        answers[key][r["threads"]] = (r["best_prompt"], r["best_negative_prompt"])
    multi = [v for v in answers.values() if len(v) > 1]
    lines = []
    if multi:
        same = sum(len(set(v.values())) == 1 for v in multi)
        lines.append(f"Same answer under every thread count: {same} of {len(multi)} (prompt, method, variant, root) "
                     f"runs.")
    roots: dict[tuple, set] = defaultdict(set)
    for (task, prompt, method, variant, _root), v in answers.items():
        roots[(task, prompt, method, variant)].add(next(iter(v.values())))
    stable = sum(len(s) == 1 for s in roots.values())
    lines.append(f"Same answer under every root seed: {stable} of {len(roots)} (prompt, method, variant) groups.")
    by_method: dict[tuple, list[bool]] = defaultdict(list)
    for (task, _prompt, method, variant), s in roots.items():
        by_method[(task, method, variant)].append(len(s) == 1)
    lines += [f"- {task} {method} ({variant}): {sum(v)} of {len(v)} prompts" for (task, method, variant), v in
              sorted(by_method.items())]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="improve,attack", type=lambda s: s.split(","))
    p.add_argument("--pool", default="v1", choices=("v1", "eval", "eval2"))
    p.add_argument("--prompt-seed", type=int, default=2,
                   help="development: 2-999 (v1); evaluation: 1000-1004 (eval), 1005-1014 (eval2: hard prompts only)")
    p.add_argument("--n", type=int, default=8, help="prompts per task")
    p.add_argument("--screen", type=int, default=1,
                   help="screen up to N x n prompts on --screen-seeds and keep n worth searching (improve: generator "
                        "wrong on at least half; attack: right on at least 3 in 4); 1: no screening")
    p.add_argument("--screen-seeds", default="50-53",
                   help="image seeds of the screening (evaluation runs: 9000,9001, the protocol's selection seeds)")
    p.add_argument("--attack-kind", default="easy", choices=("easy", "hard"),
                   help="prompts to attack: easy (one object) or hard (incl. two objects: larger synonym spaces)")
    p.add_argument("--min-candidates", type=int, default=0, help="attack: skip prompts whose space is smaller")
    p.add_argument("--attack-min-rate", type=float, default=0.75,
                   help="attack prompts: the generator right on at least this share of the screening seeds")
    p.add_argument("--mf-ladder", default=None, help="mf: the fidelity ladder, e.g. steps:20%%,full")
    p.add_argument("--mf-share", type=float, default=None, help="mf: budget share of the cheapest rung")
    p.add_argument("--mf-rounds", type=int, default=None, help="mf: rounds (anytime)")
    p.add_argument("--tpe-ladder", default=None, help="tpe: the ladder (default full: no previews)")
    p.add_argument("--tpe-keep", type=float, default=None, help="tpe: share of a batch promoted past the cheap rung")
    p.add_argument("--methods", default="random,hybrid", type=lambda s: s.split(","),
                   help="search methods, each NAME[+sparse[MEAN]][+beamB][+both][+select=PRESET], e.g. "
                        f"random,random+sparse,greedy,random+select=judge_b (presets: {', '.join(SELECT_PRESETS)})")
    p.add_argument("--variants", default="1seed", type=lambda s: s.split(","))
    p.add_argument("--roots", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--threads", default="1", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--budgets", default="40", type=lambda s: [float(x) for x in s.split(",")],
                   help="one or more budgets; with several, variants are labelled variant@budget (budget curves)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--report-seeds", default="100-107")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--pairs", default=[], type=lambda s: [x for x in s.split(",") if x],
                   help="extra paired comparisons METHOD/VARIANT:REF_METHOD/REF_VARIANT, e.g. "
                        "mf/rerank:random/rerank@80")
    p.add_argument("--out", default="runs/robustness")
    args = p.parse_args()
    if args.pool == "eval2" and "attack" in args.tasks and args.attack_kind == "easy":
        p.error("the eval2 pool has hard prompts only: attack with --attack-kind hard")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    try:  # every method spec checked before any model loads
        selected = [m for m in args.methods if "select" in method_spec(m)[1]]
    except ValueError as e:
        p.error(str(e))
    unranked = [v for v in args.variants if not VARIANTS[v]["rerank_top"]]
    if selected and unranked:
        p.error(f"methods {selected} use selection judges, which score the re-ranking's images: run them with "
                f"--variants rerank, not {unranked}")
    records = read_records(Path(args.out) / "records.jsonl") if args.summary_only else run(args)
    pairs = [tuple(x.replace("/", ":").split(":")) for x in args.pairs]
    table = summarise(records, pairs)
    print(table)
    (Path(args.out) / "summary.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
