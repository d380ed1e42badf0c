"""Measure the shapes world's models: generator faithfulness (ground truth) and judge separability (AUC).

    python benchmarks/world_quality.py                      # defaults: 50 easy + 51 hard prompts, 50 DDIM steps
    python benchmarks/world_quality.py --guidance 1,3,5,7.5 --json out/world_quality.json

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
    def __init__(self, device: str) -> None:
        from dpo_diff.world import load_judge

        self.model, self.tok, proc = load_judge(device=device)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-easy", type=int, default=50)
    p.add_argument("--n-hard", type=int, default=51)
    p.add_argument("--guidance", default="1,3,5,7.5")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="prompt-set and sampling seed (held-out seeds: not 0 in demos)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--save-images", type=Path, default=None, help="write a PNG grid per set and guidance here")
    args = p.parse_args(argv)

    import torch
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from dpo_diff.world import heldout_prompts, load_checker, load_generator, summarize
    from dpo_diff.world.prompts import scene_for_prompt
    from dpo_diff.world.render import render_batch

    t0 = time.time()
    easy = heldout_prompts("easy", args.n_easy, seed=args.seed)
    hard = heldout_prompts("hard", args.n_hard, seed=args.seed)
    hard_kind = ["rare_word", "unseen_combo", "two_objects"]
    pipe = load_generator(device=args.device)
    checker = load_checker(device=args.device)
    judge = Judge(args.device)
    report: dict = {"steps": args.steps, "seed": args.seed, "n_easy": len(easy), "n_hard": len(hard),
                    "generator": {}, "judge": {}}

    # --- judge on rendered ground truth
    rng = np.random.default_rng([args.seed, 7])
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

    # --- generator
    for g in [float(x) for x in args.guidance.split(",")]:
        res = {}
        for name, ps in (("easy", easy), ("hard", hard)):
            gen = generate(pipe, ps, g, args.steps, args.seed)
            faith = checker.score(gen, ps)
            entry = summarize(faith)
            entry["judge_loss_mean"] = float(judge.loss(gen, ps).mean())
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
                Image.fromarray(grid).resize((cols * 68, rows * 68), Image.Resampling.NEAREST).save(
                    args.save_images / f"{name}_g{g:g}.png")
            if name == "easy":
                ok = [k for k, f in enumerate(faith) if f.all_correct]
                if len(ok) >= 2:
                    m = judge.loss(gen[ok], [ps[k] for k in ok])
                    sh = [ps[ok[(j + 1) % len(ok)]] for j in range(len(ok))]
                    keep_g = [j for j in range(len(ok)) if sh[j] != ps[ok[j]]]
                    mm = judge.loss(gen[[ok[j] for j in keep_g]], [sh[j] for j in keep_g])
                    res["judge_auc_generated_easy"] = auc(m, mm)
        report["generator"][f"guidance_{g:g}"] = res
        print(f"guidance {g:g}: easy all-correct {res['easy']['all_correct']:.3f}, hard all-correct "
              f"{res['hard']['all_correct']:.3f}", flush=True)
    report["seconds"] = time.time() - t0
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
