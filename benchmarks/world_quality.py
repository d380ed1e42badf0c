"""Measure the shapes world's models: generator faithfulness (ground truth) and judge separability (AUC).

    python benchmarks/world_quality.py                      # defaults: 50 easy + 51 hard prompts, 50 DDIM steps
    python benchmarks/world_quality.py --guidance 1,3,5,7.5 --json out/world_quality.json
    # the pre-registered evaluation (docs/evaluation_protocol.md): fresh prompts, several seeds, 95% intervals
    python benchmarks/world_quality.py --pool eval --prompt-seeds 1000,1001,1002,1003,1004 --guidance 7.5,3 \
        --json out/world_quality_eval.json

With several prompt seeds every seed's results are written to ``--json`` as soon as they exist, and a rerun of the
same command skips what is there. Intervals (``scipy.stats``): over prompts pooled across seeds (Wilson for
rates, a paired bootstrap over prompts for AUCs) and a t interval across the seeds' values.

* Generator: images for held-out prompts at each guidance scale (one seed per prompt), read by the ground-truth
  checker; all-correct rate and per-attribute accuracy, easy (target >= 0.80) and hard (by kind).
* Judge: AUC of the spherical loss ``L = 2 arcsin(|x - y| / 2)^2`` between unit CLIP embeddings separating matching
  from mismatching prompt/image pairs (target >= 0.95): on rendered ground-truth images of held-out prompts against
  (a) another held-out prompt and (b) the same prompt with one word replaced by an antonym; and on generated images
  the checker found faithful against other prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def spherical_loss(x, y):
    import torch

    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.nn.functional.normalize(y, dim=-1)
    return 2 * torch.arcsin((x - y).norm(dim=-1) / 2) ** 2


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(neg > pos) + 0.5 P(tie): the loss of mismatching pairs should exceed that of matching ones."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((neg > pos).mean() + 0.5 * (neg == pos).mean())


class Judge:
    def __init__(self, device: str, folder: str | None = None) -> None:
        from dpo_diff.world import load_judge

        self.model, self.tok, proc = load_judge(folder, device=device)
        self.mean = np.array(proc.image_mean, dtype=np.float32)
        self.std = np.array(proc.image_std, dtype=np.float32)
        self.device = device

    def _feat(self, out):
        return out if hasattr(out, "norm") else out.pooler_output

    def loss(self, images_u8: np.ndarray, prompts: list[str]) -> np.ndarray:
        import torch

        x = (images_u8.astype(np.float32) / 255 - self.mean) / self.std
        pix = torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)
        ids = self.tok(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            img = self._feat(self.model.get_image_features(pixel_values=pix))
            txt = self._feat(self.model.get_text_features(**ids))
        return spherical_loss(img, txt).cpu().numpy()


class SpecJudge:
    """Any judge spec (``world:vqa``, ``clip:FOLDER``, ...) through the judge registry, with the interface above."""

    def __init__(self, spec: str, device: str) -> None:
        from dpo_diff.judges.spec import JudgeRegistry

        self.judge = JudgeRegistry(device).load(spec)

    def loss(self, images_u8: np.ndarray, prompts: list[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(prompts), 64):
            x = torch.from_numpy(images_u8[i:i + 64]).permute(0, 3, 1, 2).float().div(255.0)
            with torch.no_grad():
                out.append(self.judge.loss(x, list(prompts[i:i + 64])).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def antonym_swap(prompt: str, rng: np.random.Generator) -> str | None:
    """``prompt`` with one attribute word replaced by an antonym (a prompt the image no longer satisfies)."""
    from dpo_diff.space import prompt_words
    from dpo_diff.world import world_substitutes

    _, ant = world_substitutes(prompt)
    ant = {w: a for w, a in ant.items() if w.lower() not in ("a", "an", "one", "two")}
    if not ant:
        return None
    word = list(ant)[int(rng.integers(len(ant)))]
    span = next(w for w in prompt_words(prompt) if w.text == word)
    new = ant[word][int(rng.integers(len(ant[word])))]
    return prompt[: span.start] + new + prompt[span.end:]


def generate(pipe, prompts: list[str], guidance: float, steps: int, seed: int, batch: int = 64) -> np.ndarray:
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i: i + batch]
        gens = [torch.Generator().manual_seed(seed * 100_003 + i + j) for j in range(len(chunk))]
        imgs = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np").images
        out.append((np.clip(imgs, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.concatenate(out)


def parse_seeds(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def measure_seed(models, prompt_seed: int, image_seed: int, args) -> dict:
    """Quality on one prompt seed's lists; images, rendered scenes and perturbations drawn from ``image_seed``."""
    from dpo_diff.world import heldout_prompts, summarize
    from dpo_diff.world.prompts import scene_for_prompt
    from dpo_diff.world.render import render_batch

    pipe, checker, judge = models
    easy = heldout_prompts("easy", args.n_easy, seed=prompt_seed, pool=args.pool)
    hard = heldout_prompts("hard", args.n_hard, seed=prompt_seed, pool=args.pool)
    hard_kind = ["rare_word", "unseen_combo", "two_objects"]
    report: dict = {"steps": args.steps, "seed": prompt_seed, "image_seed": image_seed, "pool": args.pool,
                    "n_easy": len(easy), "n_hard": len(hard), "generator": {}, "judge": {}, "per_prompt": {}}

    # --- judge on rendered ground truth
    rng = np.random.default_rng([image_seed, 7])
    prompts = easy + hard
    imgs = render_batch([scene_for_prompt(q, rng) for q in prompts])
    match = judge.loss(imgs, prompts)
    perm = (np.arange(len(prompts)) + 1 + rng.integers(len(prompts) - 1)) % len(prompts)
    other = [prompts[i] for i in perm]
    keep = [i for i in range(len(prompts)) if prompts[i] != other[i]]
    mism = judge.loss(imgs[keep], [other[i] for i in keep])
    swaps = [(i, antonym_swap(q, rng)) for i, q in enumerate(prompts)]
    swaps = [(i, s) for i, s in swaps if s is not None]
    swapped = judge.loss(imgs[[i for i, _ in swaps]], [s for _, s in swaps])
    gt_check = summarize(checker.score(imgs, prompts))
    report["judge"]["rendered"] = {
        "auc_random_mismatch": auc(match, mism), "auc_antonym_swap": auc(match[[i for i, _ in swaps]], swapped),
        "loss_match_mean": float(match.mean()), "loss_random_mismatch_mean": float(mism.mean()),
        "loss_antonym_swap_mean": float(swapped.mean()),
    }
    report["checker_on_rendered_heldout"] = gt_check
    # Paired per-prompt losses (matching, mismatching) for pooled intervals across seeds.
    report["per_prompt"]["judge_random_mismatch"] = [[float(match[i]), float(m)] for i, m in zip(keep, mism)]
    report["per_prompt"]["judge_antonym_swap"] = [[float(match[i]), float(m)] for (i, _), m in zip(swaps, swapped)]

    # --- generator
    for g in [float(x) for x in args.guidance.split(",") if x.strip()]:
        res = {}
        for name, ps in (("easy", easy), ("hard", hard)):
            gen = generate(pipe, ps, g, args.steps, image_seed)
            faith = checker.score(gen, ps)
            entry = summarize(faith)
            entry["judge_loss_mean"] = float(judge.loss(gen, ps).mean())
            report["per_prompt"][f"all_correct_{name}_g{g:g}"] = [bool(f.all_correct) for f in faith]
            if name == "hard":
                for k, kind in enumerate(hard_kind):
                    entry[f"all_correct_{kind}"] = float(np.mean([f.all_correct for f in faith[k::3]]))
            res[name] = entry
            if args.save_images is not None:
                from PIL import Image

                args.save_images.mkdir(parents=True, exist_ok=True)
                cols = 10
                rows = -(-len(gen) // cols)
                grid = np.zeros((rows * 34, cols * 34, 3), np.uint8)
                for k, im in enumerate(gen):
                    r, c = divmod(k, cols)
                    grid[r * 34: r * 34 + 32, c * 34: c * 34 + 32] = im
                suffix = "" if len(args.prompt_seed_list) == 1 else f"_s{prompt_seed}"
                Image.fromarray(grid).resize((cols * 68, rows * 68), Image.Resampling.NEAREST).save(
                    args.save_images / f"{name}_g{g:g}{suffix}.png")
            if name == "easy":
                ok = [k for k, f in enumerate(faith) if f.all_correct]
                if len(ok) >= 2:
                    m = judge.loss(gen[ok], [ps[k] for k in ok])
                    sh = [ps[ok[(j + 1) % len(ok)]] for j in range(len(ok))]
                    keep_g = [j for j in range(len(ok)) if sh[j] != ps[ok[j]]]
                    mm = judge.loss(gen[[ok[j] for j in keep_g]], [sh[j] for j in keep_g])
                    res["judge_auc_generated_easy"] = auc(m, mm)
        report["generator"][f"guidance_{g:g}"] = res
        print(f"prompt seed {prompt_seed}, guidance {g:g}: easy all-correct {res['easy']['all_correct']:.3f}, "
              f"hard all-correct {res['hard']['all_correct']:.3f}", flush=True)
    return report


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean across seeds with a Student t interval (``scipy.stats.t``); no interval for one value."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    out = {"mean": float(v.mean()), "values": [float(x) for x in v], "n_seeds": int(len(v))}
    if len(v) >= 2:
        sem = float(stats.sem(v))
        lo, hi = stats.t.interval(level, len(v) - 1, loc=v.mean(), scale=sem) if sem > 0 else (v.mean(), v.mean())
        out["t_interval"] = [float(lo), float(hi)]
    return out


def rate_interval(flags: list[bool], level: float = 0.95) -> dict:
    """A pooled rate over prompts with a Wilson interval (``scipy.stats.binomtest``)."""
    from scipy import stats

    k, n = int(np.sum(flags)), len(flags)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return {"rate": k / n, "k": k, "n": n, "wilson_interval": [float(ci.low), float(ci.high)]}


def auc_interval(pairs: list[list[float]], seed: int = 0, level: float = 0.95) -> dict:
    """AUC of pooled (matching, mismatching) loss pairs with a paired bootstrap interval over prompts."""
    from scipy import stats

    a = np.asarray(pairs, dtype=float)
    res = stats.bootstrap((a[:, 0], a[:, 1]), auc, paired=True, vectorized=False, n_resamples=1000,
                          confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return {"auc": auc(a[:, 0], a[:, 1]), "n": int(len(a)), "bootstrap_interval": [float(ci.low), float(ci.high)]}


def summarize_seeds(per_seed: dict[str, dict], guidance: list[float]) -> dict:
    """Across prompt seeds: t intervals over the seeds' values, and pooled-over-prompts intervals."""
    from dpo_diff.world import heldout_prompts

    reps = list(per_seed.values())
    out: dict = {"prompt_seeds": [r["seed"] for r in reps], "image_seeds": [r["image_seed"] for r in reps],
                 "judge": {}, "generator": {}}
    for key in ("random_mismatch", "antonym_swap"):
        out["judge"][f"auc_{key}"] = {
            "across_seeds": t_interval([r["judge"]["rendered"][f"auc_{key}"] for r in reps]),
            "pooled": auc_interval([p for r in reps for p in r["per_prompt"][f"judge_{key}"]]),
        }
    out["judge"]["loss_match_mean"] = t_interval([r["judge"]["rendered"]["loss_match_mean"] for r in reps])
    out["checker_on_rendered_all_correct"] = t_interval([r["checker_on_rendered_heldout"]["all_correct"]
                                                         for r in reps])
    for g in guidance:
        key = f"guidance_{g:g}"
        gs: dict = {}
        for name in ("easy", "hard"):
            gs[f"all_correct_{name}"] = {
                "across_seeds": t_interval([r["generator"][key][name]["all_correct"] for r in reps]),
                "pooled": rate_interval([f for r in reps for f in r["per_prompt"][f"all_correct_{name}_g{g:g}"]]),
            }
            gs[f"judge_loss_{name}"] = t_interval([r["generator"][key][name]["judge_loss_mean"] for r in reps])
        for k, kind in enumerate(("rare_word", "unseen_combo", "two_objects")):
            gs[f"all_correct_{kind}"] = {
                "across_seeds": t_interval([r["generator"][key]["hard"][f"all_correct_{kind}"] for r in reps]),
                "pooled": rate_interval([f for r in reps for f in r["per_prompt"][f"all_correct_hard_g{g:g}"][k::3]]),
            }
        # Easy prompts by the background they name ("none": no background phrase, i.e. black).
        by_bg: dict[str, list[bool]] = {}
        for r in reps:
            for q, f in zip(heldout_prompts("easy", r["n_easy"], seed=r["seed"], pool=r["pool"]),
                            r["per_prompt"][f"all_correct_easy_g{g:g}"]):
                bg = q.split()[-2] if q.endswith(" background") else "none"
                by_bg.setdefault(bg, []).append(f)
        gs["all_correct_easy_by_background"] = {bg: rate_interval(v) for bg, v in sorted(by_bg.items())}
        gen_auc = [r["generator"][key]["judge_auc_generated_easy"] for r in reps
                   if "judge_auc_generated_easy" in r["generator"][key]]
        if gen_auc:
            gs["judge_auc_generated_easy"] = t_interval(gen_auc)
        out["generator"][key] = gs
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-easy", type=int, default=50)
    p.add_argument("--n-hard", type=int, default=51)
    p.add_argument("--guidance", default="1,3,5,7.5", help="guidance scales of the generator measurement; '' skips "
                   "the generator (judge AUCs on rendered images only)")
    p.add_argument("--judge", default=None, help="a judge folder to measure instead of the shipped judge (e.g. the "
                   "second judge, src/dpo_diff/data/shapes_world/judge_b)")
    p.add_argument("--judge-spec", default=None, help="a judge spec to measure instead (any kind, e.g. world:vqa; "
                   "the AUCs read its loss the same way)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="prompt-set and sampling seed (held-out seeds: not 0 in demos)")
    p.add_argument("--pool", choices=("v1", "eval"), default="v1",
                   help="held-out prompt pool; 'eval' only with the pre-registered evaluation prompt seeds")
    p.add_argument("--prompt-seeds", default=None,
                   help="comma-separated prompt seeds (default: --seed); results per seed and with 95%% intervals")
    p.add_argument("--image-seeds", default=None,
                   help="comma-separated image seeds, one per prompt seed (default: the prompt seed for pool v1, "
                        "EVAL_QUALITY_SEEDS for pool eval)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the report here (and resume from it)")
    p.add_argument("--save-images", type=Path, default=None, help="write a PNG grid per set and guidance here")
    args = p.parse_args(argv)

    from dpo_diff.world.prompts import EVAL_PROMPT_SEEDS, EVAL_QUALITY_SEEDS

    args.prompt_seed_list = parse_seeds(args.prompt_seeds) if args.prompt_seeds else [args.seed]
    if args.image_seeds:
        image_seeds = parse_seeds(args.image_seeds)
    elif args.pool == "eval":
        bad = [s for s in args.prompt_seed_list if s not in EVAL_PROMPT_SEEDS]
        if bad:
            p.error(f"--pool eval takes only the pre-registered prompt seeds {list(EVAL_PROMPT_SEEDS)}, got {bad}")
        image_seeds = [EVAL_QUALITY_SEEDS[EVAL_PROMPT_SEEDS.index(s)] for s in args.prompt_seed_list]
    else:
        image_seeds = list(args.prompt_seed_list)
    if len(image_seeds) != len(args.prompt_seed_list):
        p.error("--image-seeds needs one image seed per prompt seed")

    import torch
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from dpo_diff.world import load_checker, load_generator

    t0 = time.time()
    judge = SpecJudge(args.judge_spec, args.device) if args.judge_spec else Judge(args.device, args.judge)
    models = (load_generator(device=args.device), load_checker(device=args.device), judge)
    guidance = [float(x) for x in args.guidance.split(",") if x.strip()]
    settings = {"steps": args.steps, "pool": args.pool, "n_easy": args.n_easy, "n_hard": args.n_hard,
                "guidance": guidance, **({"judge": args.judge} if args.judge else {}),
                **({"judge_spec": args.judge_spec} if args.judge_spec else {})}

    if len(args.prompt_seed_list) == 1:  # the original single-seed report
        report = measure_seed(models, args.prompt_seed_list[0], image_seeds[0], args)
        report.pop("per_prompt")
        report["seconds"] = time.time() - t0
    else:
        report = {"settings": settings, "per_seed": {}}
        if args.json is not None and args.json.exists():
            old = json.loads(args.json.read_text())
            if old.get("settings") == settings:
                report["per_seed"] = {k: v for k, v in old.get("per_seed", {}).items()
                                      if [v["seed"], v["image_seed"]] in [list(x) for x in
                                                                          zip(args.prompt_seed_list, image_seeds)]}
                print(f"resuming: prompt seeds {sorted(report['per_seed'])} already measured", flush=True)
        for ps, im in zip(args.prompt_seed_list, image_seeds):
            if str(ps) in report["per_seed"]:
                continue
            t1 = time.time()
            rep = measure_seed(models, ps, im, args)
            rep["seconds"] = time.time() - t1
            report["per_seed"][str(ps)] = rep
            if args.json is not None:  # checkpoint: nothing measured is lost
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(report, indent=1) + "\n")
        report["summary"] = summarize_seeds(report["per_seed"], guidance)
        report["seconds_this_run"] = time.time() - t0
    text = json.dumps(report, indent=1 if "per_seed" in report else 2)
    print(json.dumps(report.get("summary", report), indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
