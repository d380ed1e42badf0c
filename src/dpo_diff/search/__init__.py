"""Searches over a prompt's space: GPO (shortcut text gradient), EPO (evolution), their hybrid, random search,
multi-fidelity successive halving (mf), model-based search (tpe, optuna's TPE), an LLM proposer (llm, OPT2I-style) and
sparse-first greedy/beam search over single edits (greedy, TextAttack's greedy word swap with word importance).

Only constants live here, so that configuration code can name the methods without importing torch.
"""

from typing import NamedTuple

METHODS = ("hybrid", "gpo", "epo", "random", "mf", "tpe", "llm", "greedy")  # the one list of search methods
NEEDS_ENDPOINT = ("llm",)  # methods that need an LLM endpoint configured: left out of "run every method" defaults
GPO_PRESET_NAMES = ("robust", "paper")  # dpo_diff.search.gradient.GPO_PRESETS, by name
DEFAULT_RERANK_TOP = 4  # seed-robust selection of optimize, bench and demo (docs/world_bench.md: the measurement)
PROPOSAL_METHODS = ("random", "epo", "hybrid", "tpe", "mf")  # the samplers that take a proposal
PROPOSALS = ("uniform", "sparse")  # how samplers draw candidates (dpo_diff.search.proposal)
DEFAULT_SPARSE_MEAN = 2.0  # mean changed slots of a sparse proposal (1 + geometric)


class TaskDefaults(NamedTuple):
    """What a command searches with when the user names nothing: the search method, the proposal of the samplers
    (:mod:`dpo_diff.search.proposal`) and the kind of space built for the prompt (``dpo-diff space build --kind``)."""

    method: str
    proposal: str
    space: str


TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "improve": TaskDefaults(method="greedy", proposal="uniform", space="hybrid"),
    "attack": TaskDefaults(method="random", proposal="uniform", space="synonym"),
}
"""The defaults of optimize, demo, bench's spaces and the web app, per task; each follows a registered evaluation
(docs/evaluation_protocol.md, docs/world_bench.md). improve: on the registered evaluation of prompt seed 1006 the
rule fixed before it ran chose greedy search (single edits first, then the best combined) over the hybrid space
(synonym swaps of the prompt's words with antonym negative-prompt terms): +9.1 points all-correct [+0.3, +18.1] and
+1.8 attribute accuracy [+0.1, +3.6] against uniform random search. attack: uniform random search over the synonym
space stays (evaluations 1004-1006): greedy and sparse random search changed half as many words but were not
non-inferior in breaking the prompt (all-correct lower bounds -16.9 and -11.5 points, the rule's margin -5)."""
AUTO = "auto"  # a method or proposal of "auto" is the task's default (TASK_DEFAULTS), resolved before a run starts
BASELINE_METHOD = "random"
"""The method of :func:`dpo_diff.search.api.search` when a library caller names none: the baseline, independent of
the task (a changed command default must not silently change what library code runs)."""
PAPER_PROPOSAL = "uniform"
"""The paper's (uniform over the product space): the default of a bare :class:`~dpo_diff.search.proposal.Proposal`
and of library calls; the commands take the task's (:data:`TASK_DEFAULTS`)."""


def task_defaults(task: str) -> TaskDefaults:
    """The defaults of ``task`` (``ValueError`` naming the tasks when it is not one)."""
    if task not in TASK_DEFAULTS:
        raise ValueError(f"unknown task {task!r}; choose one of {tuple(TASK_DEFAULTS)}")
    return TASK_DEFAULTS[task]


def resolve_method(method: str, task: str) -> str:
    """``method``, or the task's default method when it is :data:`AUTO`."""
    return task_defaults(task).method if method == AUTO else method


def resolve_proposal(proposal: str, task: str) -> str:
    """``proposal``, or the task's default proposal when it is :data:`AUTO`."""
    return task_defaults(task).proposal if proposal == AUTO else proposal


def per_task(field: str) -> str:
    """The tasks' defaults of ``field`` (a :class:`TaskDefaults` field) in words, for help texts."""
    return ", ".join(f"{getattr(d, field)} for {task}" for task, d in TASK_DEFAULTS.items())


METHOD_HELP = (f"search method (default {AUTO}: the task's, {per_task('method')}, as the registered evaluations "
               f"chose, docs/world_bench.md)")
PROPOSAL_HELP = (f"how random, epo, hybrid's EPO, tpe and mf draw candidates: uniform over every combination (the "
                 f"paper's) or sparse edits of the user prompt (few changed words/terms first) (default {AUTO}: the "
                 f"task's, {per_task('proposal')})")
