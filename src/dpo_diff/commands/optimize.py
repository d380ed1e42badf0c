"""Optimize one prompt with DPO-Diff: improve it (by default greedy search over antonym negative-prompt terms and
synonym swaps of its words) or attack the model (by default random search over synonym rewrites).

Writes DIR/config.json, DIR/result.json (before/after losses on search and held-out report seeds), DIR/search.json,
DIR/progress.jsonl and side-by-side PNGs of the user prompt's images and the optimized ones on the same seeds. Without
--space the task's space is built for the prompt and saved as DIR/space.json; without --model the bundled shapes world
generates and judges:

  dpo-diff optimize --prompt "a green orb" --task improve --out runs/orb
"""

from __future__ import annotations

import argparse
import json

# The backbones' pipeline defaults (the backend classes' DEFAULTS, resolved once the model's class is known;
# written here so that --help needs no diffusers import; tests/test_cli_defaults.py checks they agree).
DEFAULT_JUDGE = "openai/clip-vit-base-patch32"
BACKBONE_STEPS = "the backbone's pipeline default: 50 for SD 1.x/2.x and SDXL, 28 for SD 3 and FLUX"
BACKBONE_GUIDANCE = ("the backbone's pipeline default: 7.5 for SD 1.x/2.x, 5.0 for SDXL, 7.0 for SD 3; FLUX: 1.0, "
                     "i.e. no true CFG, and 4.0 where a negative prompt is searched (improve), which needs FLUX's "
                     "true CFG (the pipeline's true_cfg_scale > 1, a second transformer call per step)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dpo_diff.commands.judge_args import add_judge_arguments
    from dpo_diff.commands.search_args import add_search_arguments
    from dpo_diff.search import AUTO, METHOD_HELP, METHODS, per_task
    from dpo_diff.space import SEARCH_TARGETS

    p.add_argument("--prompt", required=True, help="the user prompt")
    p.add_argument("--task", default="improve", choices=("improve", "attack"))
    p.add_argument("--space", default=None,
                   help="search-space JSON (hand-edited, from 'dpo-diff space build' or the reference "
                        "implementation's layout); the entry for --prompt is used. Default: the task's space is "
                        f"built for --prompt as 'space build --kind KIND' builds it (KIND: {per_task('space')}; "
                        "rewrites of the prompt kept by the meaning constraint; the world's own substitutes with the "
                        "shapes world) and saved as DIR/space.json")
    p.add_argument("--target", default="auto", choices=SEARCH_TARGETS,
                   help="slots to search (auto: for improve every slot of a space with negative-prompt terms, i.e. "
                        "the hybrid space's synonym swaps too; for attack the rewrites, positive slots). --target "
                        "negative with --task improve is the paper's search: negative-prompt terms only")
    p.add_argument("--model", default=None,
                   help="Stable Diffusion hub id or local diffusers folder (default: the bundled shapes-world "
                        "generator, which runs on a CPU with no download)")
    p.add_argument("--judge", default=None,
                   help=f"CLIP hub id or local folder (default: the shapes-world judge with the bundled generator, "
                        f"else {DEFAULT_JUDGE})")
    add_judge_arguments(p)
    p.add_argument("--method", default=AUTO, choices=(AUTO, *METHODS), help=METHOD_HELP)
    p.add_argument("--budget", type=float, default=40.0, help="full-generation equivalents (default 40, as the paper)")
    p.add_argument("--seeds", default="0", help="image seeds for the search, e.g. 0,1,2")
    p.add_argument("--report-seeds", default="1000,1001,1002", help="held-out seeds for before/after numbers")
    p.add_argument("--seed", type=int, default=0, help="root seed of the search's random streams")
    p.add_argument("--steps", type=int, default=None, help=f"sampling steps (default: {BACKBONE_STEPS})")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale (default: {BACKBONE_GUIDANCE}); the value used is written "
                        f"to config.json")
    p.add_argument("--scheduler", default="ddim", help="ddim | pndm | euler | dpm++ | model; on SD 3 and FLUX (flow "
                   "matching): ddim = euler (flow-matching Euler) | heun (SD 3) | model")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: the backbone's default (fp32 on CPU; fp16 for SD 1.x/2.x, bf16 for SDXL/SD 3/FLUX "
                        "on GPUs)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8, help="candidate x seed rows per UNet batch")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the shortcut gradient's UNet calls and VAE decode in backward: same gradient, "
                        "less memory (SDXL at 1024 px), about one more forward per GPO step")
    add_search_arguments(p)
    add_llm_arguments(p.add_argument_group("llm search (--method llm)"))
    p.add_argument("--similarity-threshold", type=float, default=0.9,
                   help="meaning constraint for rewritten prompts (positive slots): minimum sentence-embedding "
                        "similarity to the user prompt; 0 disables (default 0.9, as the paper)")
    p.add_argument("--similarity-model", default=None,
                   help="sentence-transformers model for the constraint (default: offline all-MiniLM-L6-v2; "
                        "sentence-transformers/sentence-t5-base for paper parity)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="reuse evaluations already in DIR/progress.jsonl (without --method/--proposal: the ones "
                        "DIR/config.json records, so a run keeps its method when the task's default changes)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print only the answer as one JSON document (user_prompt, "
                                                       "best, before, after, cost, note, out) instead of lines")


def add_llm_arguments(g) -> None:
    from dpo_diff.search.llm_search import LLMSearchConfig

    d = LLMSearchConfig()
    g.add_argument("--llm-model", default="", help="chat model that proposes candidates, e.g. gpt-4o or llama3.1")
    g.add_argument("--llm-base-url", default=None,
                   help="OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, ...; default: $OPENAI_BASE_URL or "
                        "OpenAI)")
    g.add_argument("--llm-api-key-env", default=d.api_key_env,
                   help=f"environment variable holding the key (default {d.api_key_env})")
    g.add_argument("--llm-per-round", type=int, default=d.per_round,
                   help=f"candidates asked for per round (default {d.per_round})")
    g.add_argument("--llm-temperature", type=float, default=d.temperature,
                   help=f"sampling temperature of the proposals (default {d.temperature})")
    g.add_argument("--llm-timeout", type=float, default=d.timeout,
                   help=f"seconds per request (default {d.timeout:g})")
    g.add_argument("--llm-attempts", type=int, default=d.max_attempts,
                   help=f"attempts per answer before the search fails (default {d.max_attempts})")
    g.add_argument("--llm-deadline", type=float, default=None,
                   help="seconds all requests of one search may take together (default: no total limit); past it "
                        "the search fails, naming the endpoint")


def llm_settings(args: argparse.Namespace, methods: tuple[str, ...] = ()):
    """The ``llm`` settings; with ``llm`` among ``methods``, the endpoint's limits and key are checked here, before
    anything loads."""
    from dpo_diff.lexicons.llm import check_api_key, check_llm_limits
    from dpo_diff.search.llm_search import LLMSearchConfig

    if "llm" in methods:
        check_llm_limits(args.llm_timeout, args.llm_attempts, args.llm_deadline)
    cfg = LLMSearchConfig(model=args.llm_model, base_url=args.llm_base_url, api_key_env=args.llm_api_key_env,
                          per_round=args.llm_per_round, temperature=args.llm_temperature, timeout=args.llm_timeout,
                          max_attempts=args.llm_attempts, deadline=args.llm_deadline)
    if "llm" in methods and cfg.model:
        import os

        check_api_key(cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
                      cfg.api_key_env)
    return cfg


def summary_lines(result: dict) -> list[str]:
    """The answer as the demo prints it: the two prompts, the loss before -> after, the cost of the budget."""
    best, goal = result["best"], "lower" if result["task"] == "improve" else "higher"
    neg = f"  negative: {best['negative_prompt']!r}" if best.get("negative_prompt") else ""
    lines = [f"{result['task']} ({goal} loss is better), method {result['method']}",
             f"  user : {result['user_prompt']!r}", f"  best : {best['prompt']!r}{neg}"]
    for key, seeds in (("search_mean", "search seeds"), ("report_mean", "held-out seeds")):
        before, after = result["before"].get(key), result["after"].get(key)
        if before is not None and after is not None:
            lines.append(f"  loss {before:.4f} -> {after:.4f} on the {seeds}")
    # :g shows 40.00000000000001 (a sum of fractional costs) as 40
    lines.append(f"  cost {result['cost']:g} of budget {result['budget']:g}, {result['evaluated']} candidates "
                 f"evaluated")
    if "selection" in result:
        from dpo_diff.optimize import selection_line

        lines.append("  " + selection_line(result["selection"]))
    return lines


def json_summary(result: dict, out: str) -> str:
    """The machine-readable answer of ``--json`` (the cost rounded as displayed: float sums are not exact)."""
    shown = {k: result[k] for k in ("user_prompt", "best", "before", "after", "cost", "note")}
    return json.dumps({**shown, "cost": round(shown["cost"], 6), "out": str(out)}, indent=2)


def judge_lines(result: dict) -> list[str]:
    """One line per judge of the result: mean report-seed loss of the user prompt and of the answer."""
    judges = result.get("judges", {})
    if len(judges) < 2 and "objective" not in result:
        return []  # the single judge's numbers are the before/after above
    lines = ["judges (mean loss on the report seeds, user -> answer; lower is better):"]
    for name, j in judges.items():
        user, best = (list(j[w]["report_losses"].values()) for w in ("user", "best"))
        if user:
            lines.append(f"  {j['role']:9s} {name}: {sum(user) / len(user):.4f} -> {sum(best) / len(best):.4f}")
    if "objective" in result:
        lines.append(f"  constraints hold on the report seeds: {result['objective']['feasible_report']}")
    return lines


def models_of(args: argparse.Namespace) -> tuple[str, str]:
    """``--model`` and ``--judge``, the bundled shapes world's where not given (said on the terminal)."""
    if args.model is not None:
        return args.model, args.judge or DEFAULT_JUDGE
    from dpo_diff.world import generator_path, judge_path

    judge = args.judge or str(judge_path())
    print(f"dpo-diff: no --model given: using the bundled shapes world (generator {generator_path()}, judge "
          f"{judge}); pass --model for a real diffusion model", flush=True)
    return str(generator_path()), judge


def recorded_choices(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with an ``auto`` --method or --proposal replaced by the one DIR/config.json records for the same
    task (what ``--resume`` continues); unchanged when there is no readable record (the resume check reports it)."""
    from pathlib import Path

    from dpo_diff.search import AUTO

    try:
        recorded = json.loads((Path(args.out) / "config.json").read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return args
    if not isinstance(recorded, dict) or recorded.get("task") != args.task:
        return args
    proposal = recorded.get("proposal")
    choices = {"method": recorded.get("method"),
               "proposal": proposal.get("kind") if isinstance(proposal, dict) else None}
    return argparse.Namespace(**{**vars(args), **{k: v for k, v in choices.items()
                                                   if isinstance(v, str) and getattr(args, k) == AUTO}})


def run(args: argparse.Namespace) -> int:
    from dpo_diff.commands.judge_args import eval_judge_specs
    from dpo_diff.commands.search_args import search_settings
    from dpo_diff.loading import resolve_device
    from dpo_diff.optimize import OptimizeConfig, optimize
    from dpo_diff.seeding import parse_seeds

    model, judge = models_of(args)
    device = resolve_device(args.device)
    args = recorded_choices(args) if args.resume else args
    cfg = OptimizeConfig(
        prompt=args.prompt, task=args.task, space=args.space, target=args.target, model=model,
        judge=judge, method=args.method, budget=args.budget, seeds=parse_seeds(args.seeds),
        report_seeds=parse_seeds(args.report_seeds) if args.report_seeds else (), seed=args.seed,
        steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, dtype=args.dtype, device=device,
        batch_size=args.batch_size, out=args.out, similarity_threshold=args.similarity_threshold or None,
        similarity_model=args.similarity_model, objective=args.objective, grad_checkpointing=args.grad_checkpointing,
        eval_judges=eval_judge_specs(args.eval_judges), llm=llm_settings(args, (args.method,)),
        **search_settings(args),
    )
    result = optimize(cfg, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite)
    if args.json:  # stdout is one JSON document, for scripts
        print(json_summary(result, args.out))
        return 0
    print("\n".join(summary_lines(result)))
    if result["note"]:
        print(result["note"])
    for note in result.get("search_notes", []):  # e.g. a stage the method skipped: never silent
        print(f"note: {note}")
    for line in judge_lines(result):
        print(line)
    print(f"results in {args.out}")
    return 0
