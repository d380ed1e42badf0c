"""Searches over a prompt's space: GPO (shortcut text gradient), EPO (evolution), their hybrid and random search.

Only constants live here, so that configuration code can name the methods without importing torch.
"""

METHODS = ("hybrid", "gpo", "epo", "random")  # the one list of search methods; hybrid (the paper's best) first
