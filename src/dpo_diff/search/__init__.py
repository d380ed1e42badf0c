"""Searches over a prompt's space: GPO (shortcut text gradient), EPO (evolution), their hybrid and random search.

Only constants live here, so that configuration code can name the methods without importing torch.
"""

METHODS = ("hybrid", "gpo", "epo", "random")  # the one list of search methods; hybrid (the paper's best) first
GPO_PRESET_NAMES = ("robust", "paper")  # dpo_diff.search.gradient.GPO_PRESETS, by name
DEFAULT_RERANK_TOP = 4  # seed-robust selection of optimize, bench and demo (docs/world_bench.md: the measurement)
