"""Searches over a prompt's space: GPO (shortcut text gradient), EPO (evolution), their hybrid, random search,
multi-fidelity successive halving (mf), model-based search (tpe, optuna's TPE), an LLM proposer (llm, OPT2I-style) and
sparse-first greedy/beam search over single edits (greedy, TextAttack's greedy word swap with word importance).

Only constants live here, so that configuration code can name the methods without importing torch.
"""

METHODS = ("hybrid", "gpo", "epo", "random", "mf", "tpe", "llm", "greedy")  # the one list of search methods
NEEDS_ENDPOINT = ("llm",)  # methods that need an LLM endpoint configured: left out of "run every method" defaults
DEFAULT_METHOD = "random"
"""The method of optimize, the UI and the demo; it follows the registered evaluation (docs/evaluation_protocol.md,
docs/world_bench.md). On the powered evaluation of prompt seed 1004 no search beat random search at budget 40 with
a paired interval above zero (improve or attack), so by the registered rule the default is the cheapest of the tied
best: random search (no gradient pass, no previews, no model; the same charged cost and wall seconds)."""
METHOD_HELP = (f"search method (default {DEFAULT_METHOD}: on the registered evaluation no search beat random search, "
               f"docs/world_bench.md)")
GPO_PRESET_NAMES = ("robust", "paper")  # dpo_diff.search.gradient.GPO_PRESETS, by name
DEFAULT_RERANK_TOP = 4  # seed-robust selection of optimize, bench and demo (docs/world_bench.md: the measurement)
PROPOSAL_METHODS = ("random", "epo", "hybrid", "tpe", "mf")  # the samplers that take a proposal
PROPOSALS = ("uniform", "sparse")  # how samplers draw candidates (dpo_diff.search.proposal)
DEFAULT_PROPOSAL = "uniform"
"""The paper's: uniform over the product space. ``sparse`` (edits of the user prompt, few slots first) is measured on
the landscape (docs/landscape.md) and registered against it before it can become the default."""
DEFAULT_SPARSE_MEAN = 2.0  # mean changed slots of a sparse proposal (1 + geometric)
PROPOSAL_HELP = ("how random, epo, hybrid's EPO, tpe and mf draw candidates: uniform over every combination (the "
                 "paper's; default) or sparse edits of the user prompt (few changed words/terms first)")
