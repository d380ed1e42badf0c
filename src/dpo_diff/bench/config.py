"""What defines a benchmark run, and the fingerprint that keeps results of different settings apart.

Two runs may share a results file only if every setting that changes a number is equal: the fingerprint
(:meth:`BenchConfig.key`) hashes them, plus the *content* of local model folders (a retrained model must not be
mixed with results of the old one). Settings that do not change numbers are left out, so a benchmark can be continued
with more methods or prompts, on another device, or on a Ray cluster: ``methods``, ``device``, ``batch_size``.
Settings of one method (GPO's, EPO's, Promptist's model) enter only the fingerprint of that method's records
(:meth:`BenchConfig.method_key`), so tuning GPO does not invalidate the other methods' results.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dpo_diff.config_dict import from_known_keys
from dpo_diff.fidelity import check_ladder
from dpo_diff.loading import model_fingerprint  # in loading: judges use it and must not import bench
from dpo_diff.search import DEFAULT_RERANK_TOP, NEEDS_ENDPOINT, PROPOSAL_METHODS
from dpo_diff.search import METHODS as SEARCH_METHOD_NAMES
from dpo_diff.search.evolution import EvolutionSearchConfig
from dpo_diff.search.gradient import GradientSearchConfig
from dpo_diff.search.greedy import GreedyConfig
from dpo_diff.search.llm_search import LLMSearchConfig
from dpo_diff.search.model_based import TPEConfig
from dpo_diff.search.multi_fidelity import MultiFidelityConfig
from dpo_diff.search.proposal import Proposal
from dpo_diff.search.selection import SelectionConfig
from dpo_diff.world.spaces import PAPER_KINDS

# baseline first in tables: random, then the others (tpe, mf, epo, gpo, hybrid)
SEARCH_METHODS = ("random", *(m for m in reversed(SEARCH_METHOD_NAMES) if m != "random"))
BASELINES = ("user", "promptist")
METHODS = ("user", "promptist", *SEARCH_METHODS)
SPACE_KINDS = ("antonym", "synonym", "nplib", "hybrid")
DEFAULT_JUDGE = "openai/clip-vit-base-patch32"
PROMPTIST = "microsoft/Promptist"
_NOT_IN_KEY = ("methods", "device", "batch_size")
_METHOD_ONLY = ("promptist_model", "promptist_tokenizer", "gpo", "epo", "mf", "tpe", "llm", "greedy", "proposal")
_LLM_KEYED = ("model", "base_url", "per_round", "history", "reasks", "temperature")  # what changes llm's answers


class BenchError(ValueError):
    """A benchmark cannot start or continue (the message says why and what to do)."""


@dataclass
class BenchConfig:
    """Everything that defines a benchmark (saved in ``DIR/bench.json``; see the module docstring)."""

    task: str = "improve"
    methods: tuple[str, ...] = tuple(m for m in METHODS if m not in NEEDS_ENDPOINT)  # llm needs an endpoint
    budget: float = 40.0  # full-generation equivalents per (prompt, method), the paper's 40
    seeds: tuple[int, ...] = (0,)  # image seeds the searches see
    report_seeds: tuple[int, ...] = (100, 101, 102)  # held-out seeds of the reported numbers
    seed: int = 0  # root of every search's random streams (the same for every method and prompt)
    world: bool = False  # the bundled shapes-world models, substitutes and ground-truth checker
    model: str = ""  # diffusers pipeline hub id or folder: SD 1.x/2.x, SDXL, SD 3, FLUX (ignored with world)
    judge: str = DEFAULT_JUDGE  # CLIP hub id or folder (ignored with world)
    # Built with the offline WordNet lexicon (the world's own substitutes with `world`); None: the task's
    # (dpo_diff.space_builder.task_space_kind: hybrid for improve, synonym for attack).
    space_kind: str | None = None
    spaces: str | None = None  # a spaces JSON file instead of building them
    steps: int = 50
    guidance: float = 7.5
    scheduler: str = "ddim"
    dtype: str = "auto"
    height: int | None = None
    width: int | None = None
    similarity_threshold: float | None = 0.9  # attack meaning constraint (paper 0.9); None: off
    similarity_model: str | None = None
    promptist_model: str = PROMPTIST
    promptist_tokenizer: str | None = None  # None: the model folder's own, else GPT-2's ("gpt2")
    gpo: GradientSearchConfig = field(default_factory=GradientSearchConfig)
    epo: EvolutionSearchConfig = field(default_factory=EvolutionSearchConfig)
    mf: MultiFidelityConfig = field(default_factory=MultiFidelityConfig)
    tpe: TPEConfig = field(default_factory=TPEConfig)
    llm: LLMSearchConfig = field(default_factory=LLMSearchConfig)  # the chat endpoint of method "llm"
    greedy: GreedyConfig = field(default_factory=GreedyConfig)  # method "greedy"
    proposal: Proposal = field(default_factory=Proposal)  # how random, epo, hybrid, tpe and mf draw candidates
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig(DEFAULT_RERANK_TOP))  # seed-robust
    time_budget: float | None = None  # wall-clock seconds per search job (equal-time comparisons on one machine)
    objective: str | None = None  # weighted judge terms instead of `judge` (dpo_diff.judges.objective)
    eval_judges: tuple[str, ...] = ()  # judges that score the answers but not the searches (cross-judge columns)
    device: str = "auto"  # auto: cuda when available (decided where each job runs)
    batch_size: int = 8

    def __post_init__(self) -> None:
        from dpo_diff.problem import TASKS, SamplingConfig, check_negative_guidance

        if isinstance(self.gpo, dict):
            self.gpo = GradientSearchConfig(**self.gpo)
        if isinstance(self.epo, dict):
            self.epo = EvolutionSearchConfig(**self.epo)
        if isinstance(self.mf, dict):
            self.mf = MultiFidelityConfig(**self.mf)
        if isinstance(self.tpe, dict):
            self.tpe = TPEConfig(**self.tpe)
        if isinstance(self.llm, dict):
            self.llm = from_known_keys(LLMSearchConfig, self.llm, what="bench llm settings", error=BenchError)
        if isinstance(self.greedy, dict):
            self.greedy = from_known_keys(GreedyConfig, self.greedy, what="bench greedy settings", error=BenchError)
        if isinstance(self.proposal, dict):
            self.proposal = from_known_keys(Proposal, self.proposal, what="bench proposal", error=BenchError)
        if isinstance(self.selection, dict):
            self.selection = SelectionConfig(**self.selection)
        if self.time_budget is not None and not (self.time_budget > 0 and math.isfinite(self.time_budget)):
            raise BenchError(f"time budget must be a finite positive number of seconds (or none), got "
                             f"{self.time_budget}")
        self.methods, self.seeds, self.report_seeds = tuple(self.methods), tuple(self.seeds), tuple(self.report_seeds)
        self._check_judges()
        if self.task not in TASKS:
            raise BenchError(f"unknown task {self.task!r}; choose one of {TASKS}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise BenchError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise BenchError(f"give at least one method, e.g. {','.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise BenchError(f"methods {list(self.methods)} list a method twice")
        if "promptist" in self.methods and self.task != "improve":
            raise BenchError("promptist rewrites prompts to look better: it is a baseline for --task improve only")
        if not self.budget > 0 or not math.isfinite(self.budget):
            raise BenchError(f"budget must be a positive number of full generations, got {self.budget}")
        if not self.seeds or not self.report_seeds:
            raise BenchError("give at least one search seed and one report seed")
        overlap = sorted(set(self.seeds) & set(self.report_seeds))
        if overlap:
            raise BenchError(f"report seeds must be held out from the search seeds; both contain {overlap}")
        try:
            self.selection = self.selection.resolved(self.seeds, self.report_seeds)
        except ValueError as e:
            raise BenchError(str(e)) from None
        if set(self.methods) & set(SEARCH_METHODS) and self.budget < len(self.seeds):
            raise BenchError(f"budget {self.budget} is smaller than one evaluation on {len(self.seeds)} seeds")
        if self.space_kind is not None and self.space_kind not in SPACE_KINDS:
            raise BenchError(f"unknown space kind {self.space_kind!r}; choose one of {SPACE_KINDS}")
        if self.world and self.spaces:
            raise BenchError("--world uses the shapes world's own substitutes; drop --spaces")
        if self.world and self.space_kind == "nplib":
            raise BenchError("the shapes world has no NPLib terms: --space-kind with --world is antonym, synonym or "
                             "hybrid")
        if self.spaces and self.space_kind:
            raise BenchError("give either --spaces FILE or --space-kind, not both")
        if not self.world and not self.model:
            raise BenchError("give --model (a Stable Diffusion hub id or folder) or --world")
        try:
            SamplingConfig(self.steps, self.guidance, self.height, self.width, self.batch_size)  # validates
            if set(self.methods) & set(SEARCH_METHODS):
                check_negative_guidance(self.task, "auto", self.guidance)
        except ValueError as e:
            raise BenchError(str(e)) from None
        if set(self.methods) & {"gpo", "hybrid"}:
            self.gpo.validate_for(self.steps)
        if "llm" in self.methods and not self.llm.model:
            raise BenchError("method llm needs a chat model: --llm-model NAME (and --llm-base-url URL for a local "
                             "OpenAI-compatible server)")
        for method in set(self.methods) & {"mf", "tpe"}:
            try:
                check_ladder(getattr(self, method).ladder, self.steps, len(self.seeds))
            except ValueError as e:
                raise BenchError(f"--{method}-ladder: {e}") from None

    @property
    def resolved_space_kind(self) -> str:
        from dpo_diff.space_builder import task_space_kind

        return self.space_kind or task_space_kind(self.task)

    def _improve_rewrites_prompt(self) -> bool:
        """Whether improve searches positive slots too: its spaces have them (select_target's ``auto``)."""
        if self.task != "improve":
            return False
        if not self.spaces:
            return self.resolved_space_kind == "hybrid"
        from dpo_diff.space import load_spaces

        return any(space.slots_of("positive") for space in load_spaces(self.spaces).values())

    def model_paths(self) -> tuple[str, str]:
        """The generator and judge to load (the bundled ones with ``world``)."""
        if self.world:
            from dpo_diff.world import generator_path, judge_path

            return str(generator_path()), str(judge_path())
        return self.model, self.judge

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"], d["seeds"], d["report_seeds"] = list(self.methods), list(self.seeds), list(self.report_seeds)
        d["eval_judges"] = list(self.eval_judges)
        d["selection"] = self.selection.to_dict()
        d["mf"], d["tpe"] = self.mf.to_dict(), self.tpe.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchConfig:
        return from_known_keys(cls, d, what="bench config", error=BenchError)

    def keyed_settings(self) -> dict[str, Any]:
        """The settings that change every method's numbers, with local model folders replaced by fingerprints of
        their content. Settings of one method only are in :meth:`method_settings`."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_KEY and k not in _METHOD_ONLY}
        model, judge = self.model_paths()
        d["model"], d["judge"] = model_fingerprint(model), model_fingerprint(judge)
        if d["dtype"] == "auto" and _runs_on_cpu(self.device):
            d["dtype"] = "fp32"  # what auto means on a CPU, so folders made before auto keep their fingerprint
        kind = None if self.spaces else self.resolved_space_kind
        # Without --space-kind a bench built the paper's space until improve's default became the hybrid space
        # (TASK_DEFAULTS): a bench building it is keyed as before, with no kind, so folders made then resume.
        d["space_kind"] = None if kind == PAPER_KINDS[self.task] else kind
        if self._improve_rewrites_prompt():
            # improve has also searched the positive slots of a space with negative ones since its default became
            # the hybrid space; records of the older, negative-only search of such spaces must not mix with these
            d["improve_target"] = "both"
        if self.spaces:
            d["spaces"] = model_fingerprint(self.spaces)
        elif not self.world and self.resolved_space_kind in ("synonym", "hybrid") and self.similarity_threshold:
            # Built rewrite spaces are pre-filtered by the meaning constraint (as 'space build' builds them); results
            # on spaces built before that was done must not mix with these.
            d["space_prefilter"] = "meaning constraint"
        # Present only when used, so the fingerprints of benchmarks without them stay what they were.
        from dpo_diff.judges.spec import parse_judges, parse_objective, source_fingerprints

        d.pop("objective", None), d.pop("eval_judges", None)
        if self.objective:
            terms = parse_objective(self.objective).terms
            d["objective"] = [[f, t.weight, t.margin] for f, t in zip(source_fingerprints([t.judge for t in terms]),
                                                                        terms)]
        if self.eval_judges:
            d["eval_judges"] = source_fingerprints(list(parse_judges(list(self.eval_judges))))
        if self.selection.judges:  # they choose every search's answer; a retrained judge must change the key
            d["selection"]["judges"] = source_fingerprints(list(parse_judges(list(self.selection.judges))))
        return d

    def _check_judges(self) -> None:
        from dpo_diff.optimize import normalised_judge_specs

        try:
            self.objective, self.eval_judges = normalised_judge_specs(self.objective, self.eval_judges)
        except ValueError as e:
            raise BenchError(str(e)) from None
        if "checker" in self.eval_judges and not self.world:
            raise BenchError("the checker evaluator is the shapes world's ground truth: it needs --world")

    def method_settings(self, method: str) -> dict[str, Any]:
        """Settings that change only ``method``'s numbers (so changing GPO's does not invalidate EPO's results)."""
        d: dict[str, Any] = {}
        if method == "promptist":
            d = {"promptist_model": model_fingerprint(self.promptist_model),
                 "promptist_tokenizer": self.promptist_tokenizer}
        if method in ("gpo", "hybrid"):
            d["gpo"] = asdict(self.gpo)
        if method in ("epo", "hybrid"):
            d["epo"] = asdict(self.epo)
        if method in ("mf", "tpe"):
            d[method] = getattr(self, method).to_dict()
        if method == "llm":
            d["llm"] = {k: getattr(self.llm, k) for k in _LLM_KEYED}
        if method == "greedy":
            d["greedy"] = self.greedy.to_dict()
        if method in PROPOSAL_METHODS and self.proposal.sparse:  # uniform: the fingerprints from before it existed
            d["proposal"] = self.proposal.to_dict()
        return d

    def key(self) -> str:
        """Fingerprint of :meth:`keyed_settings`: a results folder holds results of one key only."""
        return _hash(self.keyed_settings())

    def method_key(self, method: str) -> str:
        """Fingerprint of a record of ``method``: :meth:`key` plus :meth:`method_settings`."""
        return _hash({"key": self.key(), "method": method, **self.method_settings(method)})


def _hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def diff_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts (nested ones as ``gpo.iterations: 20 -> 10``)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_settings(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return out


def _runs_on_cpu(device: str | None) -> bool:
    import torch

    return device == "cpu" or (device in (None, "", "auto") and not torch.cuda.is_available())
