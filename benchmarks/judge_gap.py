"""Judge diagnostics: how well each judge sees what the ground-truth checker sees, on generated images of hard
development prompts, and how far each judge's (or selection rule's) choice falls from the checker's.

Development prompts only (``--pool v1``, the landscape's screening: improve prompts the generator gets right on at
most half of the screening seeds). Per prompt, the landscape's fixed candidate set in the improve task's antonym space
(the user prompt, every single change, pairs of the best singles by the search judge, uniform random search's draws)
is generated on the search seeds (0-2); every image is scored by every ``--judges`` judge against the *user* prompt
and read by the checker. Images are kept (``OUT/images/``), so adding a judge later costs no generation.

1. **Per-attribute separation (AUC).** For each attribute the prompt claims (count, colour, shape, size, position,
   background) the images the checker finds right on it against those it finds wrong; for two-object prompts also
   **binding**: images whose objects carry every claimed colour, shape and size word (what a bag of words sees) bound
   right, against the same words bound to the wrong objects. AUC = P(a right image's loss < a wrong image's loss),
   pairs taken within a prompt (judges' loss levels differ between prompts); 95% interval by resampling prompts.
2. **The choice gap.** Per judge its exhaustive choice over the set (best mean loss on the search seeds), the
   checker's choice (the space's honest ceiling), and the selection rules of the re-ranking as the searches apply
   them: the search judge's top ``--top`` candidates on search seed 0, re-ranked on validation seeds 1-2 by the
   search judge (today's default), by another judge, or by the agreement rule (every selection judge must prefer
   the candidate to the user prompt, else the user prompt is kept). Every pick is measured on the held-out report
   seeds: all-correct, attribute accuracy, the search judge's loss against the user's, and the **gaming share** (of
   the prompts whose pick lowered the search judge's report loss, the share with no all-correct gain).
3. **Searches for real** on the same memo (new candidates are generated and kept): each ``--methods`` search at
   ``--budget`` under every selection setting (``--select-judge`` as the searches take it), one answer per root.

    python benchmarks/judge_gap.py --prompt-seed 16 --n 12 --judges world:judge,world:judge_b,world:vqa \\
        --out runs/judge_gap
    python benchmarks/judge_gap.py --summary-only --out runs/judge_gap

The first judge is the search judge (the objective the fixed set's pairs and the re-ranking's top come from).
Records: ``OUT/records.jsonl``, one per prompt, appended as each finishes (a rerun skips finished prompts).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ATTRIBUTES = ("all claims", "count", "colour", "shape", "size", "position", "background", "binding")
YES = 0.5  # a VQA judge "says yes" where P("Yes") = exp(-loss) is above this: its agreement with the checker
SEARCH_SEEDS = (0, 1, 2)
VALIDATION = (1, 2)  # the default re-ranking's validation seeds after search seed 0
BOOTSTRAP = 2000


def sys_path_benchmarks() -> None:
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


# ------------------------------------------------------------------------------------------------ images and scores
class ImageMemo:
    """Generated images per (candidate, seed) for one prompt, with every judge's loss and the checker's reading.

    Offers the part of the landscape's interface its fixed set needs (``space``, ``task``, ``fill``, ``mean`` with
    field 0 = the search judge's loss), so the candidate set is built exactly as the landscape builds it."""

    def __init__(self, problem, judges: dict[str, Any], checker, images: dict | None = None) -> None:
        self.problem, self.judges, self.checker = problem, judges, checker
        self.space, self.task = problem.space, problem.task
        self.images: dict[tuple[tuple[int, ...], int], np.ndarray] = dict(images or {})
        self.scores: dict[str, dict[tuple[tuple[int, ...], int], float]] = {name: {} for name in judges}
        self.readings: dict[tuple[tuple[int, ...], int], Any] = {}
        self._candidate_of: dict[Any, tuple[int, ...]] = {}
        self.render(self.space.default)

    def fill(self, candidates: Sequence[Sequence[int]], seeds: Sequence[int]) -> None:
        """Generate the images the memo lacks (one batch per group missing the same seeds), then score what is
        unscored."""
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for c in dict.fromkeys(tuple(c) for c in candidates):
            missing = tuple(s for s in seeds if (c, s) not in self.images)
            if missing:
                groups.setdefault(missing, []).append(c)
        for missing, cands in groups.items():
            imgs = self.problem.generate([self.space.render(c) for c in cands], list(missing))
            arr = to_uint8(imgs)
            for i, c in enumerate(cands):
                for j, s in enumerate(missing):
                    self.images[(c, s)] = arr[i * len(missing) + j]
        self.score([(tuple(c), s) for c in candidates for s in seeds])

    def score(self, keys: Sequence[tuple[tuple[int, ...], int]]) -> None:
        import torch

        for name, judge in self.judges.items():
            todo = [k for k in dict.fromkeys(keys) if k not in self.scores[name]]
            for i in range(0, len(todo), 64):
                chunk = todo[i:i + 64]
                with torch.no_grad():
                    vals = judge.loss(from_uint8([self.images[k] for k in chunk]), self.space.prompt)
                self.scores[name].update(zip(chunk, (float(v) for v in vals.cpu())))
        todo = [k for k in dict.fromkeys(keys) if k not in self.readings]
        if todo:
            self.readings.update(zip(todo, self.checker.read(np.stack([self.images[k] for k in todo]))))

    # -- the problem interface searches use (the search judge's losses; images for selection judges)
    @property
    def sampling(self):
        return self.problem.sampling

    @property
    def user_prompt(self) -> str:
        return self.space.prompt

    constraint = None

    def render(self, candidate: Sequence[int]):
        pair = self.space.render(tuple(candidate))
        self._candidate_of[pair] = tuple(candidate)
        return pair

    def calls_for(self, steps: int | None = None) -> int:
        return self.problem.calls_for(steps)

    def candidate_losses(self, candidates, seeds, fidelity="full"):
        import torch

        if str(fidelity) != "full":
            raise ValueError("the judge diagnostics score full generations only")
        self.fill(candidates, seeds)
        search = next(iter(self.judges))
        return torch.tensor([[self.scores[search][(tuple(c), s)] for s in seeds] for c in candidates])

    def losses(self, pairs, seeds, keep_images: bool = False):
        """``Problem.losses`` for pairs this memo rendered (the re-ranking asks by pair)."""
        cands = [self._candidate_of[p] for p in pairs]
        losses = self.candidate_losses(cands, seeds)
        images = from_uint8([self.images[(c, s)] for c in cands for s in seeds]) if keep_images else None
        return losses, images

    def mean(self, candidate: Sequence[int], seeds: Sequence[int], field: int | str = 0) -> float:
        """Mean over ``seeds`` of a judge's loss (``field``: 0 = the search judge, or a judge's name)."""
        name = next(iter(self.judges)) if field == 0 else str(field)
        self.fill([candidate], seeds)
        return statistics.mean(self.scores[name][(tuple(candidate), s)] for s in seeds)

    def truth(self, candidate: Sequence[int], seeds: Sequence[int]) -> tuple[float, float]:
        """(all-correct rate, attribute accuracy) of ``candidate`` on ``seeds`` against the user prompt."""
        self.fill([candidate], seeds)
        scores = [faithfulness(self.readings[(tuple(candidate), s)], self.space.prompt) for s in seeds]
        return (statistics.mean(float(f.all_correct) for f in scores),
                statistics.mean(f.attribute_accuracy for f in scores))


def to_uint8(images) -> np.ndarray:
    from dpo_diff.world.checker import images_to_array

    return images_to_array(images)


def from_uint8(arrs: Sequence[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255.0)


def faithfulness(reading, prompt: str):
    from dpo_diff.world.captions import parse_caption
    from dpo_diff.world.checker import score_reading

    return score_reading(reading, parse_caption(prompt))


# ------------------------------------------------------------------------------------------------ attribute labels
def attribute_labels(reading, prompt: str) -> dict[str, bool]:
    """Per claimed attribute of ``prompt``: whether the image (the checker's ``reading``) gets it right; for two
    objects also ``binding`` where every claimed word is present (right: bound to the right objects; wrong: the same
    words on the wrong objects); absent where the attribute is not claimed or binding is not defined."""
    from dpo_diff.world.captions import parse_caption

    spec = parse_caption(prompt)
    result = faithfulness(reading, prompt)
    out: dict[str, bool] = {"all claims": result.all_correct}
    for attr, ok in result.checks:
        out[attr] = out.get(attr, True) and ok
    if spec.count == 2 and len(reading.objects) == 2:
        per_object = [ok for attr, ok in result.checks if attr in ("colour", "shape", "size")]
        if words_present(spec, reading):
            out["binding"] = all(per_object)
    return out


def words_present(spec, reading) -> bool:
    """Whether every colour, shape and size the prompt claims is on some object of the image (a bag of words)."""
    from collections import Counter

    for attr in ("colour", "shape", "size"):
        want = Counter(getattr(o, attr) for o in spec.objects if getattr(o, attr) is not None)
        have = Counter(getattr(o, attr) for o in reading.objects)
        if want - have:
            return False
    return True


def within_prompt_pairs(right: Sequence[float], wrong: Sequence[float]) -> tuple[float, int]:
    """(concordant pairs, pairs): a right image's loss below a wrong one's counts 1, a tie 1/2."""
    if not right or not wrong:
        return 0.0, 0
    r, w = np.asarray(right)[:, None], np.asarray(wrong)[None, :]
    return float((r < w).sum() + 0.5 * (r == w).sum()), len(right) * len(wrong)


def pooled_auc(per_prompt: Sequence[tuple[float, int]], seed: int = 0) -> tuple[float, float, float, int]:
    """(AUC, low, high, pairs): pooled within-prompt pairs; the interval resamples prompts."""
    have = [p for p in per_prompt if p[1]]
    if not have:
        return float("nan"), float("nan"), float("nan"), 0
    auc = sum(c for c, _ in have) / sum(n for _, n in have)
    rng = random.Random(seed)
    boots = []
    for _ in range(BOOTSTRAP):
        draw = [have[rng.randrange(len(have))] for _ in have]
        boots.append(sum(c for c, _ in draw) / sum(n for _, n in draw))
    boots.sort()
    return auc, boots[int(0.025 * BOOTSTRAP)], boots[int(0.975 * BOOTSTRAP) - 1], sum(n for _, n in have)


# ------------------------------------------------------------------------------------------------ choices
def selection_pick(memo: ImageMemo, cands: Sequence[tuple[int, ...]], top: int,
                   select: Sequence[str]) -> tuple[int, ...]:
    """The re-ranking as searches apply it: the search judge's ``top`` best on seed 0, then, with no ``select``
    judges, the best search-judge mean on seeds 0-2 (the user prompt kept unless it is beaten there); with
    ``select`` judges, ordered by the first one's mean on the validation seeds and the first candidate every one of
    them prefers to the user prompt on those seeds (the agreement rule), else the user prompt."""
    sign = memo.task.objective
    user = tuple(memo.space.default)
    best = sorted(cands, key=lambda c: sign(memo.mean(c, (0,))))[:top]
    if not select:
        pick = min(best, key=lambda c: sign(memo.mean(c, SEARCH_SEEDS)))
        return pick if sign(memo.mean(pick, SEARCH_SEEDS)) < sign(memo.mean(user, SEARCH_SEEDS)) else user
    order = sorted(best, key=lambda c: sign(memo.mean(c, VALIDATION, select[0])))
    for c in order:
        if all(sign(memo.mean(c, VALIDATION, j)) < sign(memo.mean(user, VALIDATION, j)) for j in select):
            return c
    return user


def choices(memo: ImageMemo, cands: Sequence[tuple[int, ...]], top: int) -> dict[str, tuple[int, ...]]:
    """Every pick measured: the user, the checker's choice, each judge's exhaustive choice and the selection
    rules (today's default; each other judge selecting; the agreement of the search judge with each other)."""
    sign = memo.task.objective
    names = list(memo.judges)
    search = names[0]
    out = {"user": tuple(memo.space.default)}
    out["checker's choice"] = max(cands, key=lambda c: (*memo.truth(c, SEARCH_SEEDS), -sign(memo.mean(c,
                                                                                                    SEARCH_SEEDS))))
    for j in names:
        out[f"{j} exhaustive"] = min(cands, key=lambda c, j=j: sign(memo.mean(c, SEARCH_SEEDS, j)))
    out[f"{search} top {top}, re-ranked by {search} (default)"] = selection_pick(memo, cands, top, ())
    for j in names[1:]:
        out[f"{search} top {top}, selected by {j}"] = selection_pick(memo, cands, top, (j,))
        out[f"{search} top {top}, agreement {search} + {j}"] = selection_pick(memo, cands, top, (search, j))
    return out


def selection_settings(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Label -> selection judges: today's re-ranking by the search judge, each other judge selecting alone, and
    the agreement of the search judge with each other one."""
    search = names[0]
    out: dict[str, tuple[str, ...]] = {f"re-ranked by {search}": ()}
    for j in names[1:]:
        out[f"selected by {j}"] = (j,)
        out[f"agreement {search} + {j}"] = (search, j)
    return out


def run_searches(memo: ImageMemo, methods: Sequence[str], roots: Sequence[int], budget: float,
                 top: int) -> dict[str, list[tuple[int, ...]]]:
    """Real searches on the memo at ``budget`` (search seed 0, re-ranking on seeds 1-2), every method under every
    selection setting, one answer per root: with selection judges their verdict decides whether the user prompt is
    kept; without, the robustness benchmark's rule (the answer must beat the user prompt where it was chosen)."""
    sys_path_benchmarks()
    from landscape import kept_answer
    from robustness import method_spec

    from dpo_diff.search.api import search
    from dpo_diff.search.selection import SelectionConfig

    out: dict[str, list[tuple[int, ...]]] = {}
    for method in methods:
        name, extra = method_spec(method)
        extra.pop("space", None)
        for label, judges in selection_settings(list(memo.judges)).items():
            answers = []
            for root in roots:
                result = search(memo, method=name, budget=budget, seeds=(0,), seed=root,
                                selection=SelectionConfig(top, VALIDATION, judges=judges),
                                select_judges={j: memo.judges[j] for j in judges} or None, **extra)
                answers.append(tuple(result.best.candidate) if judges else kept_answer(memo, result))
            out[f"{method} at {budget:g}, {label}"] = answers
    return out


# ------------------------------------------------------------------------------------------------ one prompt
def prompt_record(memo: ImageMemo, args: argparse.Namespace) -> dict[str, Any]:
    """The fixed set on the search seeds (per image: every judge's loss and the attribute labels) and every pick
    on the report seeds (a search's: the mean over its roots)."""
    sys_path_benchmarks()
    from landscape import changed, fixed_set

    cands = fixed_set(memo, SEARCH_SEEDS, args.pair_top, args.uniform)
    picks = {k: [v] for k, v in choices(memo, cands, args.top).items()}
    picks.update(run_searches(memo, args.methods, args.roots, args.budget, args.top))
    memo.fill([c for cs in picks.values() for c in cs], args.report)
    prompt = memo.space.prompt
    images = [{"candidate": list(c), "seed": s, "changes": changed(c),
               "losses": {j: memo.scores[j][(c, s)] for j in memo.judges},
               "labels": attribute_labels(memo.readings[(c, s)], prompt)}
              for c in cands for s in SEARCH_SEEDS]
    return {"prompt": prompt, "kind": prompt_kind_of(prompt), "judges": list(memo.judges), "fixed_set": len(cands),
            "images": images, "picks": {label: measured(memo, cs, args.report) for label, cs in picks.items()}}


def measured(memo: ImageMemo, answers: Sequence[tuple[int, ...]], report: Sequence[int]) -> dict[str, Any]:
    """Report-seed ground truth and every judge's loss of one pick (several roots' answers: their means)."""
    from landscape import changed

    truth = [memo.truth(c, report) for c in answers]
    return {"candidates": [list(c) for c in answers],
            "changes": statistics.mean(changed(c) for c in answers),
            "kept_user": statistics.mean(float(not any(c)) for c in answers),
            "all_correct": statistics.mean(t[0] for t in truth),
            "attribute_accuracy": statistics.mean(t[1] for t in truth),
            "losses": {j: statistics.mean(memo.mean(c, report, j) for c in answers) for j in memo.judges}}


def prompt_kind_of(prompt: str) -> str:
    from dpo_diff.world import prompt_kind

    return prompt_kind(prompt)


# ------------------------------------------------------------------------------------------------ summary
def auc_lines(records: list[dict]) -> list[str]:
    judges = records[0]["judges"]
    lines = ["| attribute | images right / wrong | " + " | ".join(f"{j} AUC" for j in judges) + " |",
             "|---|---|" + "---|" * len(judges)]
    for attr in ATTRIBUTES:
        cells, counts = [], None
        for j in judges:
            per, n_right, n_wrong = [], 0, 0
            for r in records:
                right = [im["losses"][j] for im in r["images"] if im["labels"].get(attr) is True]
                wrong = [im["losses"][j] for im in r["images"] if im["labels"].get(attr) is False]
                per.append(within_prompt_pairs(right, wrong))
                n_right, n_wrong = n_right + len(right), n_wrong + len(wrong)
            auc, lo, hi, pairs = pooled_auc(per)
            cells.append("n/a" if not pairs else f"{auc:.3f} [{lo:.3f}, {hi:.3f}]")
            counts = f"{n_right} / {n_wrong}"
        lines.append(f"| {attr} | {counts} | " + " | ".join(cells) + " |")
    return lines


def agreement_lines(records: list[dict]) -> list[str]:
    """VQA judges' yes/no (P("Yes") > 0.5) against the checker's all-correct, per image."""
    lines = []
    for j in (j for j in records[0]["judges"] if j.startswith("vqa:")):
        said = [(float(np.exp(-im["losses"][j])) > YES, im["labels"]["all claims"]) for r in records
                for im in r["images"]]
        agree = sum(a == b for a, b in said) / len(said)
        yes_right = sum(a and b for a, b in said) / max(1, sum(b for _, b in said))
        no_wrong = sum(not a and not b for a, b in said) / max(1, sum(not b for _, b in said))
        lines.append(f"* {j} says yes (P(\"Yes\") > {YES}) where the checker finds every claim right: agreement "
                     f"{100 * agree:.1f}% of {len(said)} images (yes on {100 * yes_right:.1f}% of the right ones, no "
                     f"on {100 * no_wrong:.1f}% of the wrong ones)")
    return lines


def pick_lines(records: list[dict]) -> list[str]:
    search = records[0]["judges"][0]
    lines = [f"| pick | all-correct | attribute accuracy | Δ {search} loss vs user | changes (mean) | "
             "kept the user prompt (prompts) | gaming share |", "|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(k for r in records for k in r["picks"]):
        have = [r for r in records if label in r["picks"]]
        ms = [r["picks"][label] for r in have]
        users = [r["picks"]["user"] for r in have]
        dl = [m["losses"][search] - u["losses"][search] for m, u in zip(ms, users)]
        gains = [m["all_correct"] - u["all_correct"] for m, u in zip(ms, users)]
        judged = [g for g, d in zip(gains, dl) if d < 0]
        gaming = f"{sum(g <= 0 for g in judged)}/{len(judged)}" if judged else "-"
        ok, acc = (100 * statistics.mean(m[f] for m in ms) for f in ("all_correct", "attribute_accuracy"))
        lines.append(f"| {label} | {ok:.1f}% | {acc:.1f}% | {statistics.mean(dl):+.4f} | "
                     f"{statistics.mean(m['changes'] for m in ms):.1f} | {sum(m['kept_user'] for m in ms):.1f} | "
                     f"{gaming} |")
    return lines


def summarise(records: list[dict]) -> str:
    if not records:
        return "no records yet"
    kinds = sorted({r["kind"] for r in records})
    counts = ", ".join(f"{k}: {sum(r['kind'] == k for r in records)}" for k in kinds)
    return "\n".join([f"{len(records)} prompts ({counts})", "",
                      "Per-attribute separation on the fixed sets' generated images (search seeds 0-2):", "",
                      *auc_lines(records), "", *agreement_lines(records), "",
                      "Picks, measured on the held-out report seeds (means over prompts):", "", *pick_lines(records),
                      ""])


# ------------------------------------------------------------------------------------------------ rescoring
def rescored(records: list[dict], images_dir: Path, judges: dict[str, Any]) -> list[dict]:
    """``records`` with every fixed-set image (search seeds) scored again by ``judges`` from the kept images (a new
    judge, or new weights under an old name, cost no generation); their losses replace or join the recorded ones."""
    import torch

    out = []
    for r in records:
        imgs = load_images(images_dir / f"{r['prompt'].replace(' ', '_')}.npz")
        keys = [(tuple(im["candidate"]), im["seed"]) for im in r["images"]]
        scores = {}
        for name, judge in judges.items():
            vals = []
            for i in range(0, len(keys), 64):
                with torch.no_grad():
                    vals += judge.loss(from_uint8([imgs[k] for k in keys[i:i + 64]]), r["prompt"]).cpu().tolist()
            scores[name] = vals
        images = [{**im, "losses": {**im["losses"], **{n: float(v[i]) for n, v in scores.items()}}}
                  for i, im in enumerate(r["images"])]
        out.append({**r, "judges": list(dict.fromkeys([*r["judges"], *judges])), "images": images})
    return out


def exhaustive_lines(records: list[dict]) -> list[str]:
    """Each judge's exhaustive choice over the fixed set and the checker's, measured where they were chosen (the
    search seeds: in-sample, so an upper bound of what the report seeds would show; no generation needed)."""
    judges = records[0]["judges"]
    rows = {j: [] for j in ("checker", *judges)}
    for r in records:
        by: dict[tuple[int, ...], list[dict]] = {}
        for im in r["images"]:
            by.setdefault(tuple(im["candidate"]), []).append(im)
        right = {c: statistics.mean(float(im["labels"]["all claims"]) for im in ims) for c, ims in by.items()}
        for j in judges:
            pick = min(by, key=lambda c, j=j: statistics.mean(im["losses"][j] for im in by[c]))
            rows[j].append(right[pick])
        rows["checker"].append(max(right.values()))
    return ["| exhaustive choice of | all-correct on the search seeds (in-sample) |", "|---|---|",
            *(f"| {j} | {100 * statistics.mean(v):.1f}% |" for j, v in rows.items())]


# ------------------------------------------------------------------------------------------------ rendered scenes
def caption_negatives(judges: dict[str, Any], n: int, seed: int) -> str:
    """On ``n`` rendered scenes (60% pairs, drawn from ``seed``), one true caption and one false caption each (the
    VQA judge's training negatives, :mod:`dpo_diff.world.negatives`): per negative kind and judge, the share of
    scenes whose true caption scores the lower loss, with a Wilson 95% interval."""
    import torch
    from scipy import stats

    from dpo_diff.world.captions import caption
    from dpo_diff.world.negatives import NEGATIVE_KINDS, negative_caption
    from dpo_diff.world.render import render_batch
    from dpo_diff.world.scene import sample_scene

    rng = np.random.default_rng([seed, 20261207])
    rows = []
    for _ in range(n):
        scene = sample_scene(rng, p_pair=0.6)
        false, kind = negative_caption(scene, rng)
        rows.append((scene, caption(scene, rng, "uniform"), false, kind))
    x = torch.from_numpy(render_batch([r[0] for r in rows])).permute(0, 3, 1, 2).float().div(255.0)
    lines = [f"True against false captions on {n} rendered scenes (seed {seed}): the share whose true caption has "
             "the lower loss", "", "| negative kind | scenes | " + " | ".join(judges) + " |",
             "|---|---|" + "---|" * len(judges)]
    wins = {}
    for name, judge in judges.items():
        with torch.no_grad():
            right = judge.loss(x, [r[1] for r in rows]).float().cpu()
            wrong = judge.loss(x, [r[2] for r in rows]).float().cpu()
        wins[name] = (right < wrong).tolist()
    for kind in NEGATIVE_KINDS:
        idx = [i for i, r in enumerate(rows) if r[3] == kind]
        cells = []
        for name in judges:
            k = sum(wins[name][i] for i in idx)
            ci = stats.binomtest(k, len(idx)).proportion_ci(method="wilson") if idx else None
            cells.append(f"{k / len(idx):.2f} [{ci.low:.2f}, {ci.high:.2f}]" if idx else "n/a")
        lines.append(f"| {kind} | {len(idx)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ running
def load_images(path: Path) -> dict:
    if not path.is_file():
        return {}
    with np.load(path) as z:
        keys = json.loads(str(z["keys"]))
        return {(tuple(c), s): z["images"][i] for i, (c, s) in enumerate(keys)}


def save_images(path: Path, images: dict) -> None:
    keys = [[list(c), s] for c, s in images]
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, images=np.stack(list(images.values())), keys=json.dumps(keys))
    tmp.replace(path)


def load_judges(specs: Sequence[str]) -> dict[str, Any]:
    from dpo_diff.judges.spec import JudgeRegistry, parse_judges

    registry = JudgeRegistry("cpu")
    return {str(s): registry.load(s) for s in parse_judges(list(specs))}


def run(args: argparse.Namespace, on_prompt: Callable[[dict], None] | None = None) -> None:
    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, load_checker
    from dpo_diff.world.spaces import world_space

    sys_path_benchmarks()
    from landscape import prompts_for

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    path = out / "records.jsonl"
    done = {r["prompt"] for r in read_records(path)}
    backend = StableDiffusionBackend.from_pretrained(str(generator_path()))
    judges = load_judges(args.judges)
    checker = load_checker()
    sampling = SamplingConfig(args.steps, RECOMMENDED_GUIDANCE, batch_size=args.batch_size)
    search_judge = next(iter(judges.values()))
    screen = argparse.Namespace(n=args.n, screen=args.screen, prompt_seed=args.prompt_seed, attack_min_candidates=0)
    for prompt in prompts_for("improve", screen, backend, search_judge, checker, sampling):
        if prompt in done:
            continue
        problem = Problem(world_space(prompt, "improve", "antonym"), Task("improve"), backend, search_judge, sampling)
        img_path = out / "images" / f"{prompt.replace(' ', '_')}.npz"
        memo = ImageMemo(problem, judges, checker, load_images(img_path))
        rec = prompt_record(memo, args)
        save_images(img_path, memo.images)
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{prompt}: {len(memo.images)} images", flush=True)
        if on_prompt:
            on_prompt(rec)


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    from dpo_diff.files import read_jsonl

    return list(read_jsonl(path, what="judge-gap record").records)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--judges", default="world:judge,world:judge_b,world:vqa", type=lambda s: s.split(","),
                   help="judge specs; the first is the search judge")
    p.add_argument("--prompt-seed", type=int, default=16, help="a development prompt seed (2-999, pool v1)")
    p.add_argument("--n", type=int, default=12, help="prompts")
    p.add_argument("--screen", type=int, default=5, help="screen up to N x n prompts")
    p.add_argument("--pair-top", type=int, default=6, help="pairs among this many best singles")
    p.add_argument("--uniform", type=int, default=32, help="uniform random search's draws (root 0) in the set")
    p.add_argument("--top", type=int, default=4, help="candidates the re-ranking takes (the default's)")
    p.add_argument("--methods", default="random,greedy", type=lambda s: s.split(","),
                   help="searches run for real on the memo under every selection setting (robustness method specs)")
    p.add_argument("--roots", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--budget", type=float, default=40.0)
    p.add_argument("--report", default="100-107", type=lambda s: list(range(int(s.split("-")[0]),
                                                                            int(s.split("-")[1]) + 1)))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--caption-negatives", type=int, default=0, metavar="N",
                   help="instead: true against false captions on N rendered scenes, per negative kind")
    p.add_argument("--caption-seed", type=int, default=1, help="the rendered scenes' seed (--caption-negatives)")
    p.add_argument("--rescore", default=None, type=lambda s: s.split(","), metavar="SPECS",
                   help="instead: score the kept images of OUT's records again with these judges (no generation) "
                        "and print the per-attribute table and the exhaustive choices on the search seeds")
    p.add_argument("--out", default="runs/judge_gap")
    args = p.parse_args(argv)
    from dpo_diff.world.prompts import DEV_PROMPT_SEEDS

    if args.prompt_seed not in DEV_PROMPT_SEEDS:
        p.error(f"judge diagnostics are for development prompts only: --prompt-seed in {DEV_PROMPT_SEEDS[0]}-"
                f"{DEV_PROMPT_SEEDS[-1]}, got {args.prompt_seed}")
    if args.caption_negatives:
        import torch

        torch.set_num_threads(args.threads)
        print(caption_negatives(load_judges(args.judges), args.caption_negatives, args.caption_seed))
        return
    if args.rescore:
        import torch

        torch.set_num_threads(args.threads)
        records = rescored(read_records(Path(args.out) / "records.jsonl"), Path(args.out) / "images",
                           load_judges(args.rescore))
        print("\n".join([*auc_lines(records), "", *agreement_lines(records), "", *exhaustive_lines(records)]))
        return
    if not args.summary_only:
        run(args)
    table = summarise(read_records(Path(args.out) / "records.jsonl"))
    print(table)
    (Path(args.out) / "summary.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
