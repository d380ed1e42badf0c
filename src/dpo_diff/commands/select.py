"""Select hard prompts (the paper's protocol): score user prompts with the judge and keep those with a loss above the
threshold (improve: the model fails them) or below it (attack: the model renders them well).

Writes OUT as a JSON object {prompt: mean loss} of the kept prompts (readable by 'dpo-diff bench --prompts OUT' and by
the reference implementation) and every prompt's per-seed losses to OUT with the suffix .scores.jsonl (kept as
scores are computed, so an interrupted selection resumes).

Example:
  dpo-diff select --prompts captions.json --task improve --threshold 0.85 --model CompVis/stable-diffusion-v1-4 \\
      --seeds 0 --max-prompts 100 --out hard_coco.json
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--prompts", required=True, help="prompt file (any format 'dpo-diff bench' reads)")
    p.add_argument("--column", default=None, help="column of CSV/Parquet/JSONL files")
    p.add_argument("--task", default="improve", choices=("improve", "attack"))
    p.add_argument("--threshold", type=float, default=0.85, help="loss threshold (paper: 0.85)")
    p.add_argument("--max-prompts", type=int, default=None, help="keep at most this many (paper: 100 per source)")
    p.add_argument("--world", action="store_true", help="score with the bundled shapes-world generator and judge")
    p.add_argument("--model", default="", help="Stable Diffusion hub id or local folder")
    p.add_argument("--judge", default="openai/clip-vit-base-patch32", help="CLIP hub id or local folder")
    p.add_argument("--seeds", default="0", help="image seeds to score on, e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50)")
    p.add_argument("--guidance", type=float, default=None, help="guidance (default 7.5; the world's with --world)")
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="JSON file for the selected prompts")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.hard_prompts import score_prompts, select
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.prompt_sets import read_prompt_set
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.space import atomic_write_text

    if args.max_prompts is not None and args.max_prompts < 1:
        raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
    seeds = parse_seeds(args.seeds)
    steps, guidance, model, judge = args.steps or 50, args.guidance, args.model, args.judge
    if args.world:
        from dpo_diff.world import RECOMMENDED_GUIDANCE, RECOMMENDED_STEPS, generator_path, judge_path

        steps, model, judge = args.steps or RECOMMENDED_STEPS, str(generator_path()), str(judge_path())
        guidance = RECOMMENDED_GUIDANCE if guidance is None else guidance
    elif not model:
        raise ValueError("give --model (a Stable Diffusion hub id or folder) or --world")
    guidance = 7.5 if guidance is None else guidance
    pset = read_prompt_set(args.prompts, column=args.column)  # before loading models: bad files fail fast
    print(pset.summary())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = StableDiffusionBackend.from_pretrained(model, device=device, dtype=args.dtype, scheduler=args.scheduler)
    clip = ClipJudge.from_pretrained(judge, device=device)
    out = Path(args.out)
    cache = out.with_name(out.name + ".scores.jsonl")

    def on_score(i: int, n: int, prompt: str, losses: list[float]) -> None:
        if not args.quiet:
            print(f"[{i + 1}/{n}] {sum(losses) / len(losses):.4f}  {prompt[:70]!r}", flush=True)

    settings = {"model": "shapes-world" if args.world else model, "judge": "shapes-world" if args.world else judge,
                "scheduler": args.scheduler, "dtype": args.dtype}
    scores = score_prompts(pset.prompts, backend, clip, seeds, steps=steps, guidance=guidance,
                           batch_size=args.batch_size, cache=cache, settings=settings, on_score=on_score)
    sel = select(scores, args.task, args.threshold, args.max_prompts)  # EmptySelection (a ValueError) says why
    atomic_write_text(out, json.dumps(sel.selected, indent=2) + "\n")
    side = ">" if args.task == "improve" else "<"
    print(f"kept {len(sel.selected)} of {len(scores)} prompts with loss {side} {args.threshold} -> {out} "
          f"(all scores: {cache})")
    return 0
