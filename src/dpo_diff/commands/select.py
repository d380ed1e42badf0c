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
import math

MAX_LOSS = math.pi**2 / 2  # the spherical CLIP loss 2 * arcsin(|x - y| / 2)^2 of opposite unit vectors


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dpo_diff.commands.judge_args import add_judge_arguments

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--prompts", required=True,
                   help="prompt file (any format 'dpo-diff bench' reads) or hf:DATASET[:CONFIG][:SPLIT][:COLUMN]")
    p.add_argument("--column", default=None, help="column of CSV/Parquet/JSONL files and hf: sets")
    p.add_argument("--task", default="improve", choices=("improve", "attack"))
    p.add_argument("--threshold", type=float, default=0.85, help="loss threshold (paper: 0.85)")
    p.add_argument("--max-prompts", type=int, default=None, help="keep at most this many (paper: 100 per source)")
    p.add_argument("--world", action="store_true", help="score with the bundled shapes-world generator and judge")
    p.add_argument("--model", default="", help="Stable Diffusion hub id or local folder")
    p.add_argument("--judge", default="openai/clip-vit-base-patch32", help="CLIP hub id or local folder")
    add_judge_arguments(p, evaluators=False, objective_help=(
        "score with a weighted sum of judge losses instead of --judge (raw, not normalised: every prompt is its own "
        "user prompt; no constraints), e.g. 'clip:openai/clip-vit-large-patch14=1,aesthetic:FILE=0.2'; the "
        "threshold is then in the sum's units"))
    p.add_argument("--seeds", default="0", help="image seeds to score on, e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50)")
    p.add_argument("--guidance", type=float, default=None, help="guidance (default 7.5; the world's with --world)")
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: the backbone's default (fp32 on CPU; fp16 for SD 1.x/2.x, bf16 for SDXL/SD 3/FLUX "
                        "on GPUs)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="JSON file for the selected prompts")
    p.add_argument("--quiet", action="store_true")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad numbers and an --out that would overwrite the prompt file (before anything is loaded)."""
    from pathlib import Path

    if args.max_prompts is not None and args.max_prompts < 1:
        raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
    if getattr(args, "objective", None):
        from dpo_diff.judges.spec import parse_objective

        if parse_objective(args.objective).constraints:
            raise ValueError("select scores each prompt on its own (no user prompt to stay near): drop the "
                             "constraint terms (JUDGE<=+M) from --objective")
        if not math.isfinite(args.threshold):
            raise ValueError(f"--threshold must be a finite number, got {args.threshold}")
    elif not (math.isfinite(args.threshold) and 0 <= args.threshold <= MAX_LOSS):
        raise ValueError(f"--threshold must be a judge loss between 0 and {MAX_LOSS:.3f} (the spherical CLIP loss's "
                         f"range; the paper uses 0.85), got {args.threshold}")
    from dpo_diff.files import check_output_file

    check_output_file(args.out, example="hard.json")  # before any prompt is scored
    out, prompts = Path(args.out), Path(args.prompts)
    cache = out.with_name(out.name + ".scores.jsonl")
    for written in (out, cache):
        if written.resolve() == prompts.resolve() or (written.exists() and prompts.exists()
                                                        and written.samefile(prompts)):
            raise ValueError(f"--out {args.out} would overwrite the prompt file --prompts {args.prompts}"
                             + (f" (with its score cache {cache})" if written == cache else "")
                             + "; choose another --out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpo_diff.backends.base import load_backend
    from dpo_diff.files import strict_dumps
    from dpo_diff.hard_prompts import score_prompts, select
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.loading import resolve_device
    from dpo_diff.problem import SamplingConfig
    from dpo_diff.prompt_sets import read_prompt_set
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.space import atomic_write_text

    check_arguments(args)
    seeds = parse_seeds(args.seeds)
    steps, guidance, model, judge = 50 if args.steps is None else args.steps, args.guidance, args.model, args.judge
    if args.world:
        from dpo_diff.world import RECOMMENDED_GUIDANCE, RECOMMENDED_STEPS, generator_path, judge_path

        steps = RECOMMENDED_STEPS if args.steps is None else args.steps
        model, judge = str(generator_path()), str(judge_path())
        guidance = RECOMMENDED_GUIDANCE if guidance is None else guidance
    elif not model:
        raise ValueError("give --model (a Stable Diffusion hub id or folder) or --world")
    guidance = 7.5 if guidance is None else guidance
    SamplingConfig(steps, guidance, batch_size=args.batch_size)  # validates
    pset = read_prompt_set(args.prompts, column=args.column)  # before loading models: bad files fail fast
    print(pset.summary())
    device = resolve_device(args.device)
    backend = load_backend(model, device=device, dtype=args.dtype, scheduler=args.scheduler)
    if args.objective:
        from dpo_diff.judges.objective import Objective
        from dpo_diff.judges.spec import shared_registry

        clip = Objective.from_spec(args.objective, shared_registry(device), task=args.task)
    else:
        clip = ClipJudge.from_pretrained(judge, device=device)
    out = Path(args.out)
    cache = out.with_name(out.name + ".scores.jsonl")

    def on_score(i: int, n: int, prompt: str, losses: list[float]) -> None:
        if not args.quiet:
            print(f"[{i + 1}/{n}] {sum(losses) / len(losses):.4f}  {prompt[:70]!r}", flush=True)

    settings = {"model": "shapes-world" if args.world else model, "judge": "shapes-world" if args.world else judge,
                "scheduler": args.scheduler, "dtype": args.dtype}
    if args.objective:  # scores of another objective must not be reused from the cache
        settings["objective"] = args.objective
    scores = score_prompts(pset.prompts, backend, clip, seeds, steps=steps, guidance=guidance,
                           batch_size=args.batch_size, cache=cache, settings=settings, on_score=on_score)
    sel = select(scores, args.task, args.threshold, args.max_prompts)  # EmptySelection (a ValueError) says why
    atomic_write_text(out, strict_dumps(sel.selected, indent=2) + "\n")
    side = ">" if args.task == "improve" else "<"
    print(f"kept {len(sel.selected)} of {len(scores)} prompts with loss {side} {args.threshold} -> {out} "
          f"(all scores: {cache})")
    return 0
