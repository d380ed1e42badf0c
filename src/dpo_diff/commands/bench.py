"""Benchmark methods on a prompt set at equal budget, as in the paper's tables (resumable; locally or on Ray).

Every method runs on every prompt with the same budget, search seeds and held-out report seeds; one record per
(prompt, method) is appended to DIR/results.jsonl as soon as it finishes. Rerunning the same command skips finished
work. Methods: user (the prompt as given), promptist (GPT-2 rewriter baseline), random, epo, gpo, hybrid.
Then: dpo-diff report DIR.

Examples:
  dpo-diff bench --world --prompts world:hard:50 --task improve --seeds 0 --report-seeds 100-102 --out runs/wb
  dpo-diff bench --prompts hard.json --task improve --model CompVis/stable-diffusion-v1-4 --seeds 0,1,2 --budget 80 \\
      --methods user,random,epo,gpo,hybrid,promptist --out runs/sd14 --ray
"""

from __future__ import annotations

import argparse

from dpo_diff.search import METHODS, NEEDS_ENDPOINT, per_task

# llm needs an endpoint (--llm-model, --llm-base-url): it runs when asked for, never by default
DEFAULT_METHODS = ",".join(("user", "random", *(m for m in reversed(METHODS) if m != "random"
                                                and m not in NEEDS_ENDPOINT)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dpo_diff.commands.judge_args import add_judge_arguments
    from dpo_diff.commands.optimize import BACKBONE_GUIDANCE, BACKBONE_STEPS, add_llm_arguments
    from dpo_diff.commands.search_args import add_search_arguments
    from dpo_diff.commands.space import KINDS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--prompts", required=True,
                   help="prompt file (.txt, .json, .jsonl, .csv, .tsv, .parquet, COCO captions, DiffusionDB "
                        "metadata), world:<easy|hard>:<n>[:<seed>] or hf:DATASET[:CONFIG][:SPLIT][:COLUMN] (a "
                        "datasets hub id, save_to_disk folder or data folder)")
    p.add_argument("--column", default=None,
                   help="column of CSV/Parquet/JSONL files and hf: sets (default prompt/caption/text)")
    p.add_argument("--task", default="improve", choices=("improve", "attack"))
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated, from user,promptist,{','.join(METHODS)} (default {DEFAULT_METHODS})")
    p.add_argument("--budget", type=float, default=40.0, help="full-generation equivalents per job (default 40)")
    p.add_argument("--seeds", default="0", help="image seeds seen by the searches, e.g. 0,1,2")
    p.add_argument("--report-seeds", default="100,101,102", help="held-out seeds of the reported numbers")
    p.add_argument("--seed", type=int, default=0, help="root seed of every search's random streams")
    p.add_argument("--out", required=True, help="results folder (rerun with the same options to resume)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first job that fails (default: record it in DIR/failures.jsonl, shown by the "
                        "report, and go on; a rerun retries it)")
    g = p.add_argument_group("models and spaces")
    g.add_argument("--world", action="store_true",
                   help="the bundled shapes-world generator and judge, the world's substitutes as spaces (of "
                        "--space-kind) and its ground-truth checker for faithfulness")
    g.add_argument("--model", default="", help="Stable Diffusion hub id or local diffusers folder")
    g.add_argument("--judge", default="openai/clip-vit-base-patch32", help="CLIP hub id or local folder")
    add_judge_arguments(g)
    g.add_argument("--space-kind", default=None, choices=KINDS,
                   help=f"build spaces of this kind with the offline WordNet lexicon, or the world's substitutes "
                        f"with --world (no nplib there) (default: the task's, {per_task('space')}; antonym: the "
                        f"paper's improve space, negative-prompt terms only)")
    g.add_argument("--spaces", default=None, help="a spaces JSON file ('dpo-diff space build') instead")
    g.add_argument("--promptist-model", default="microsoft/Promptist", help="hub id or folder of the rewriter")
    g.add_argument("--promptist-tokenizer", default=None, help="its tokenizer (default: the model's, else gpt2)")
    s = p.add_argument_group("sampling and search")
    s.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps (default: the world's recommended value with --world, else {BACKBONE_STEPS})")
    s.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance (default: the world's recommended value with --world, else "
                        f"{BACKBONE_GUIDANCE})")
    s.add_argument("--scheduler", default="ddim")
    s.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: the backbone's default (fp32 on CPU; fp16 for SD 1.x/2.x, bf16 for SDXL/SD 3/FLUX "
                        "on GPUs)")
    s.add_argument("--device", default="auto", help="cuda, cpu, ... (default: cuda where available)")
    s.add_argument("--batch-size", type=int, default=8, help="candidate x seed rows per UNet batch")
    add_search_arguments(s)
    add_llm_arguments(p.add_argument_group("llm search (--methods ...,llm)"))
    s.add_argument("--similarity-threshold", type=float, default=0.9,
                   help="attack meaning constraint (sentence similarity); 0 disables (default 0.9)")
    s.add_argument("--similarity-model", default=None)
    r = p.add_argument_group("Ray")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run jobs as Ray tasks: without ADDRESS on a local Ray instance, else on that cluster "
                        "(host:port, ray://host:port or auto)")
    r.add_argument("--ray-workers", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    r.add_argument("--ray-gpus-per-job", type=float, default=None,
                   help="GPUs per task (default 1 if the cluster has GPUs, else 0)")
    r.add_argument("--ray-cpus-per-job", type=float, default=1.0)
    r.add_argument("--retries", type=int, default=2, help="retries of a failed Ray task (default 2)")


def sampling_defaults(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """``--steps``/``--guidance``, those not given filled with the world's recommended values (``--world``) or the
    backbone's pipeline defaults, as ``optimize`` fills them (improve searches negative prompts)."""
    steps, guidance = args.steps, args.guidance
    if steps is not None and guidance is not None:
        return steps, guidance
    if args.world:
        from dpo_diff.world import RECOMMENDED_GUIDANCE, RECOMMENDED_STEPS

        defaults = RECOMMENDED_STEPS, RECOMMENDED_GUIDANCE
    elif args.model:
        from dpo_diff.files import output_lock
        from dpo_diff.loading import resolve_device
        from dpo_diff.optimize import pipeline_defaults

        if args.ray is None:  # an unusable device is the first error, before the model is looked up (as optimize)
            resolve_device(args.device)
        with output_lock(args.out):  # and a busy output folder the next (run_bench takes the lock again)
            defaults = pipeline_defaults(args.model, negative=args.task == "improve")
    else:
        return steps, guidance  # no model: BenchConfig's own error says so
    return (defaults[0] if steps is None else steps), (defaults[1] if guidance is None else guidance)


def config_from_args(args: argparse.Namespace):
    from dpo_diff.bench.config import BenchConfig
    from dpo_diff.commands.judge_args import eval_judge_specs
    from dpo_diff.commands.optimize import llm_settings
    from dpo_diff.commands.search_args import search_settings
    from dpo_diff.seeding import parse_seeds

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    seeds, report_seeds = parse_seeds(args.seeds), parse_seeds(args.report_seeds)  # before any model is looked up
    llm = llm_settings(args, methods)
    if args.guidance is not None:
        from dpo_diff.problem import check_guidance

        check_guidance(args.guidance)
    steps, guidance = sampling_defaults(args)
    return BenchConfig(
        task=args.task, methods=methods, budget=args.budget, seeds=seeds, report_seeds=report_seeds, seed=args.seed,
        world=args.world, model="" if args.world else args.model, judge="" if args.world else args.judge,
        space_kind=args.space_kind, spaces=args.spaces, steps=50 if steps is None else steps,
        guidance=7.5 if guidance is None else guidance, scheduler=args.scheduler, dtype=args.dtype,
        similarity_threshold=args.similarity_threshold or None, similarity_model=args.similarity_model,
        promptist_model=args.promptist_model, promptist_tokenizer=args.promptist_tokenizer,
        **search_settings(args), device=args.device, batch_size=args.batch_size, objective=args.objective,
        eval_judges=eval_judge_specs(args.eval_judges), llm=llm,
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from dpo_diff.bench.runner import RayOptions, run_bench

    ray = None
    if args.ray is not None:  # checked before the config: a bad option never starts Ray or looks up a model
        ray = RayOptions(address=args.ray or None, workers=args.ray_workers, gpus_per_job=args.ray_gpus_per_job,
                         cpus_per_job=args.ray_cpus_per_job, retries=args.retries)
    cfg = config_from_args(args)
    summary = run_bench(cfg, args.prompts, args.out, column=args.column, ray=ray, argv=list(sys.argv),
                        log=lambda line: print(line, flush=True), fail_fast=args.fail_fast)
    failed = (f"; {len(summary.failed)} failed (recorded in {args.out}/failures.jsonl and shown by the report; rerun "
              f"the same command to retry them)") if summary.failed else ""
    print(f"done: {summary.already_done + summary.ran} of {summary.total} jobs in {args.out}{failed}; "
          f"make the report with: dpo-diff report {args.out}")
    return 1 if summary.failed else 0
