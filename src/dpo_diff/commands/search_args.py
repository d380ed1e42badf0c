"""Command-line options of the search shared by ``optimize`` and ``bench`` (one definition of each flag)."""

from __future__ import annotations

import argparse
from typing import Any


def add_search_arguments(g) -> None:
    """GPO settings, seed-robust selection and the wall-clock budget."""
    from dpo_diff.search import DEFAULT_RERANK_TOP, GPO_PRESET_NAMES

    g.add_argument("--gpo-preset", default="robust", choices=GPO_PRESET_NAMES,
                   help="GPO settings: robust (default: averaged Gumbel samples and seeds, normalized steps, at most "
                        "a share of the budget) or paper (single-sample RMSprop, 20 iterations whatever the budget)")
    g.add_argument("--gpo-iterations", type=int, default=20, help="most GPO iterations (default 20)")
    g.add_argument("--k-schedule", default="step-15-2", help="step-A-B | fixed-A | random-A-B")
    g.add_argument("--grad-steps", type=int, default=1, help="K grad-enabled steps of the shortcut gradient")
    g.add_argument("--gpo-sample-chunk", type=int, default=None,
                   help="Gumbel samples per GPO forward/backward pass (default: all on a CPU, 1 on a GPU; higher is "
                        "faster on a large GPU, out-of-memory halves it)")
    g.add_argument("--rerank-top", type=int, default=DEFAULT_RERANK_TOP,
                   help=f"seed-robust selection: re-score the best N candidates on --validation-seeds and choose by "
                        f"the mean over search and validation seeds (charged to the budget, at most 20%% of it; "
                        f"default {DEFAULT_RERANK_TOP}; 0: off, the paper's protocol)")
    g.add_argument("--validation-seeds", default="",
                   help="seeds for --rerank-top (default: the two smallest seeds above the search seeds that are not "
                        "report seeds)")
    from dpo_diff.commands.judge_args import SELECT_HELP

    g.add_argument("--select-judge", action="append", default=[], metavar="SPECS", help=SELECT_HELP)
    g.add_argument("--time-budget", type=float, default=None,
                   help="optional wall-clock limit of each search in seconds (compare methods at equal time)")
    from dpo_diff.search.model_based import TPEConfig
    from dpo_diff.search.multi_fidelity import MultiFidelityConfig

    mf, tpe = MultiFidelityConfig(), TPEConfig()
    g.add_argument("--mf-ladder", default=",".join(mf.ladder),
                   help=f"mf: fidelities cheapest first, ending at full: steps:N (a few-step generation), "
                        f"shortcut:K (the no-grad shortcut loss at K), N and K counts or %% of --steps, each "
                        f"optionally @SEEDS (fewer search seeds) (default {','.join(mf.ladder).replace('%', '%%')})")
    g.add_argument("--mf-screen-share", type=float, default=mf.screen_share,
                   help=f"mf: share of the budget spent on the cheapest rung (default {mf.screen_share})")
    g.add_argument("--mf-rounds", type=int, default=mf.rounds,
                   help=f"mf: rounds, each ending with full evaluations (anytime; default {mf.rounds})")
    g.add_argument("--tpe-ladder", default=",".join(tpe.ladder),
                   help=f"tpe: one cheap rung then full (default {','.join(tpe.ladder).replace('%', '%%')}: each "
                        f"batch is previewed there and its best --tpe-keep share evaluated in full), or full alone")
    g.add_argument("--tpe-keep", type=float, default=tpe.keep,
                   help=f"tpe: share of each batch promoted past the cheap rung (default {tpe.keep})")
    add_sparse_arguments(g)


def add_sparse_arguments(g) -> None:
    """The proposal every sampler takes and the greedy search's settings."""
    from dpo_diff.search import AUTO, DEFAULT_SPARSE_MEAN, PROPOSAL_HELP, PROPOSALS
    from dpo_diff.search.greedy import GreedyConfig

    greedy = GreedyConfig()
    g.add_argument("--proposal", default=AUTO, choices=(AUTO, *PROPOSALS), help=PROPOSAL_HELP)
    g.add_argument("--sparsity-mean", type=float, default=DEFAULT_SPARSE_MEAN,
                   help=f"--proposal sparse: mean number of changed words/terms per candidate (>= 1; default "
                        f"{DEFAULT_SPARSE_MEAN:g})")
    g.add_argument("--beam", type=int, default=greedy.beam,
                   help=f"greedy: beam width (1: greedy; default {greedy.beam})")
    g.add_argument("--greedy-expand", type=int, default=greedy.expand,
                   help=f"greedy: best single changes each state tries to add per round (default {greedy.expand})")
    g.add_argument("--max-changes", type=int, default=greedy.max_changes,
                   help="greedy: most words/terms an answer may change (default 0: no limit)")
    g.add_argument("--greedy-screen", default=greedy.screen,
                   help="greedy: preview the single changes at this cheaper fidelity when they do not fit the budget "
                        "(e.g. steps:10%%; default: sample them, every slot first)")


def search_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``gpo``, ``mf``, ``tpe``, ``greedy``, ``proposal`` (an ``auto`` one: ``--task``'s default), ``selection`` and
    ``time_budget`` keyword arguments of OptimizeConfig / BenchConfig."""
    from dpo_diff.search import resolve_proposal
    from dpo_diff.search.gradient import GradientSearchConfig
    from dpo_diff.search.greedy import GreedyConfig
    from dpo_diff.search.model_based import TPEConfig
    from dpo_diff.search.multi_fidelity import MultiFidelityConfig
    from dpo_diff.search.proposal import Proposal
    from dpo_diff.search.selection import SelectionConfig
    from dpo_diff.seeding import parse_seeds

    validation = parse_seeds(args.validation_seeds) if args.validation_seeds else ()
    return {"gpo": GradientSearchConfig.preset(args.gpo_preset, iterations=args.gpo_iterations,
                                               k_schedule=args.k_schedule, grad_steps=args.grad_steps,
                                               sample_chunk=args.gpo_sample_chunk),
            "mf": MultiFidelityConfig(ladder=args.mf_ladder, screen_share=args.mf_screen_share,
                                      rounds=args.mf_rounds),
            "tpe": TPEConfig(ladder=args.tpe_ladder, keep=args.tpe_keep),
            "greedy": GreedyConfig(beam=args.beam, expand=args.greedy_expand, max_changes=args.max_changes,
                                   screen=args.greedy_screen),
            "proposal": Proposal(resolve_proposal(args.proposal, args.task), args.sparsity_mean),
            "selection": SelectionConfig(args.rerank_top, validation, judges=args.select_judge),
            "time_budget": args.time_budget}
