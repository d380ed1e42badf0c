"""``optimize``: the whole DPO-Diff run for one prompt, from models to an output folder.

Example (a GPU and Stable Diffusion v1.4)::

    from dpo_diff.optimize import OptimizeConfig, optimize
    cfg = OptimizeConfig(prompt="a red car on a snowy road", task="improve", space="spaces.json",
                         model="CompVis/stable-diffusion-v1-4", device="cuda", dtype="fp16", out="runs/car")
    result = optimize(cfg)
    print(result["best"]["negative_prompt"], result["after"]["report_mean"])

The output folder gets ``config.json`` (the resolved config), ``progress.jsonl`` (every evaluation as it happens),
``search.json`` (the full search record), ``result.json`` (before/after losses per seed on the search seeds and on
held-out report seeds, cost, time) and PNGs of the user prompt's images beside the optimized ones on the same seeds.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dpo_diff.config_dict import from_known_keys
from dpo_diff.fidelity import check_ladder
from dpo_diff.files import strict_dumps
from dpo_diff.search import AUTO, DEFAULT_RERANK_TOP, METHODS, resolve_method, resolve_proposal
from dpo_diff.search.evolution import EvolutionSearchConfig
from dpo_diff.search.gradient import GradientSearchConfig
from dpo_diff.search.greedy import GreedyConfig
from dpo_diff.search.llm_search import LLMSearchConfig
from dpo_diff.search.model_based import TPEConfig
from dpo_diff.search.multi_fidelity import MultiFidelityConfig
from dpo_diff.search.proposal import Proposal
from dpo_diff.search.selection import SelectionConfig
from dpo_diff.space import SEARCH_TARGETS, SearchSpace, atomic_write_text


@dataclass
class OptimizeConfig:
    """Everything that defines a run (saved as ``config.json`` next to its results)."""

    prompt: str = ""
    task: str = "improve"
    space: str | None = None  # JSON file with the space for `prompt` (None: pass a SearchSpace to optimize())
    target: str = "auto"  # which slots to search: auto = the task's (select_target)
    model: str = ""
    judge: str = "openai/clip-vit-base-patch32"
    method: str = AUTO  # "auto": the task's default (dpo_diff.search.TASK_DEFAULTS), resolved on construction
    budget: float = 40.0  # full-generation equivalents (one full sampler run on one seed = 1)
    seeds: tuple[int, ...] = (0,)  # image seeds seen by the search
    report_seeds: tuple[int, ...] = (1000, 1001, 1002)  # held-out seeds for the final before/after numbers
    seed: int = 0  # root of every random stream of the search (Gumbel noise, EPO, sampling)
    steps: int | None = 50  # None: the backbone's pipeline default (see resolve_sampling)
    guidance: float | None = 7.5  # None: likewise (FLUX: 1, no true CFG; 4 where a negative prompt is searched)
    scheduler: str = "ddim"
    dtype: str = "auto"
    device: str = "cpu"
    judge_device: str | None = None
    batch_size: int = 8
    height: int | None = None
    width: int | None = None
    grad_checkpointing: bool = False  # recompute the shortcut's grad-enabled UNet calls and decode in backward
    out: str = "runs/optimize"
    similarity_threshold: float | None = 0.9  # meaning constraint on rewritten prompts (positive slots); None: off
    similarity_model: str | None = None  # sentence-embedding model (None: offline all-MiniLM-L6-v2)
    gpo: GradientSearchConfig = field(default_factory=GradientSearchConfig)
    epo: EvolutionSearchConfig = field(default_factory=EvolutionSearchConfig)
    mf: MultiFidelityConfig = field(default_factory=MultiFidelityConfig)
    tpe: TPEConfig = field(default_factory=TPEConfig)
    llm: LLMSearchConfig = field(default_factory=LLMSearchConfig)  # the endpoint of method "llm"
    greedy: GreedyConfig = field(default_factory=GreedyConfig)  # method "greedy": beam width, expansions, ...
    # How random, epo, hybrid, tpe and mf draw candidates: a Proposal, or a kind name ("auto": the task's default),
    # made a Proposal on construction so that config.json records the proposal used.
    proposal: Proposal | str = AUTO
    # seed-robust selection: re-rank the best 4 on 2 validation seeds (chosen above the search seeds when not given)
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig(DEFAULT_RERANK_TOP))
    time_budget: float | None = None  # optional wall-clock limit of the search, seconds
    # Weighted judge terms and constraints instead of `judge` (dpo_diff.judges.objective), e.g.
    # "clip:openai/clip-vit-large-patch14=1,aesthetic:FILE=0.2"; None: the single CLIP judge `judge`.
    objective: str | None = None
    eval_judges: tuple[str, ...] = ()  # judges that score the final images but never the search (judges.spec)

    def __post_init__(self) -> None:
        from dpo_diff.problem import TASKS

        if isinstance(self.gpo, dict):
            self.gpo = GradientSearchConfig(**self.gpo)
        if isinstance(self.epo, dict):
            self.epo = EvolutionSearchConfig(**self.epo)
        if isinstance(self.mf, dict):
            self.mf = MultiFidelityConfig(**self.mf)
        if isinstance(self.tpe, dict):
            self.tpe = TPEConfig(**self.tpe)
        if isinstance(self.llm, dict):
            self.llm = from_known_keys(LLMSearchConfig, self.llm)
        if isinstance(self.greedy, dict):
            self.greedy = from_known_keys(GreedyConfig, self.greedy)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        self._resolve_task_defaults()
        if self.method == "llm" and not self.llm.model:
            raise ValueError("method llm needs a chat model: --llm-model NAME (and --llm-base-url URL for a local "
                             "OpenAI-compatible server)")
        if isinstance(self.selection, dict):
            self.selection = SelectionConfig(**self.selection)
        if self.time_budget is not None and not (self.time_budget > 0 and math.isfinite(self.time_budget)):
            raise ValueError(f"time budget must be a finite positive number of seconds (or none), got "
                             f"{self.time_budget}")
        self.seeds, self.report_seeds = tuple(self.seeds), tuple(self.report_seeds)
        self.objective, self.eval_judges = normalised_judge_specs(self.objective, self.eval_judges)
        if self.target not in SEARCH_TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose one of {SEARCH_TARGETS}")
        if not self.budget > 0 or not math.isfinite(self.budget):
            raise ValueError(f"budget must be a positive number, got {self.budget}")
        if not self.seeds:
            raise ValueError("give at least one search seed")
        overlap = set(self.seeds) & set(self.report_seeds)
        if overlap:
            raise ValueError(f"report seeds must be held out from the search seeds; both contain {sorted(overlap)}")
        self.selection = self.selection.resolved(self.seeds, self.report_seeds)
        if self.similarity_threshold is not None and not 0 <= self.similarity_threshold <= 1:
            raise ValueError(f"similarity_threshold must be in [0, 1] or None, got {self.similarity_threshold}")
        from dpo_diff.problem import check_guidance, check_negative_guidance

        if self.guidance is not None:  # checked as given, before a default is looked up for the other setting
            check_guidance(self.guidance)
            check_negative_guidance(self.task, self.target, self.guidance)
        if self.steps is not None and self.steps < 2:
            raise ValueError(f"steps must be >= 2, got {self.steps}")
        if self.steps is None or self.guidance is None:
            return  # the backbone's defaults: the checks below run when resolve_sampling fills them in
        from dpo_diff.problem import SamplingConfig

        SamplingConfig(self.steps, self.guidance, self.height, self.width, self.batch_size)  # validates
        if self.method in ("gpo", "hybrid"):
            self.gpo.validate_for(self.steps)
        if self.method in ("mf", "tpe"):
            try:
                check_ladder(getattr(self, self.method).ladder, self.steps, len(self.seeds))
            except ValueError as e:
                raise ValueError(f"--{self.method}-ladder: {e}") from None

    def _resolve_task_defaults(self) -> None:
        """Replace "auto" by the task's method and proposal (a user's choice is kept as given)."""
        self.method = resolve_method(self.method, self.task)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {(AUTO, *METHODS)}")
        if isinstance(self.proposal, dict):
            self.proposal = from_known_keys(Proposal, self.proposal)
        elif isinstance(self.proposal, str):
            self.proposal = Proposal(resolve_proposal(self.proposal, self.task))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"], d["report_seeds"] = list(self.seeds), list(self.report_seeds)
        d["eval_judges"] = list(self.eval_judges)
        d["selection"] = self.selection.to_dict()
        d["mf"], d["tpe"] = self.mf.to_dict(), self.tpe.to_dict()  # lists, as config.json reads back
        return d

    @property
    def judged_seeds(self) -> tuple[int, ...]:
        """Seeds on which the answer is chosen: the search seeds, plus validation seeds when the budget re-ranks."""
        return self.seeds + (self.selection.validation_seeds if self.selection.top_for(self.budget) else ())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimizeConfig:
        return from_known_keys(cls, d)


def normalised_judge_specs(objective: str | None, eval_judges) -> tuple[str | None, tuple[str, ...]]:
    """The objective and evaluator specs parsed (a bad spec fails before anything runs) and written canonically."""
    from dpo_diff.judges.spec import parse_judges, parse_objective

    evaluators = tuple(str(s) for s in parse_judges(list(eval_judges))) if eval_judges else ()
    return (str(parse_objective(objective)) if objective else None), evaluators


def select_target(space: SearchSpace, task: str, target: str) -> SearchSpace:
    """The part of ``space`` a run searches. ``auto``: for improve, every slot of a space with negative-prompt terms
    (the default hybrid space's synonym swaps with its antonym terms; an antonym or nplib space's terms); for attack,
    the rewrites of the prompt's words (positive slots). ``negative``, ``positive`` and ``both`` as named (``negative``
    for improve: the paper's negative-prompt-only search).

    Raises ``ValueError`` when the space has slots but none of the kind the task or target needs (e.g. a synonym space
    for improve): searching something else than asked would silently answer another question.
    """
    from dpo_diff.problem import Task

    needed = Task(task).default_target if target == "auto" else target
    sub = space.select(needed)
    if sub.slots or not space.slots:
        # improve may also rewrite the prompt where the space offers it (the registered default, TASK_DEFAULTS)
        return space if target == "auto" and task == "improve" else sub
    other = "positive" if needed == "negative" else "negative"
    kind = {"negative": "negative-prompt terms (antonym or nplib space)",
            "positive": "rewrites of the prompt's words (synonym space)"}
    words = ", ".join(dict.fromkeys(s.word or "(nplib)" for s in space.slots))
    how = "--kind antonym" if needed == "negative" else "--kind synonym"
    raise ValueError(
        f"the space for {space.prompt!r} has only {other} slots ({kind[other]}; words: {words}), but "
        f"{'--task ' + task if target == 'auto' else '--target ' + target} searches {needed} slots "
        f"({kind[needed]}). Build a space with them ('dpo-diff space build {how}' or --kind hybrid), or pass "
        f"--target {other} to search the slots it has")


def environment() -> dict[str, Any]:
    import torch

    import dpo_diff

    info: dict[str, Any] = {"dpo_diff": dpo_diff.__version__, "python": platform.python_version(),
                            "torch": torch.__version__, "platform": platform.platform()}
    for mod in ("diffusers", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class _Searched:
    """What the search part of a run found (``search`` is ``None`` when the space offers nothing to search)."""

    search: Any
    best_pair: Any
    best_candidate: tuple[int, ...]
    note: str
    started: float  # perf_counter() when this process's part of the run began
    earlier_seconds: float  # search time of the interrupted parts of a resumed run

    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.started


def optimize(cfg: OptimizeConfig, *, space: SearchSpace | None = None, backend=None, judge=None,
             constraint=None, progress: bool = True, resume: bool = False, overwrite: bool = False,
             extra_metrics: Callable[[Any, Any, list[int]], dict[str, Any]] | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run DPO-Diff for one prompt and write the output folder. Returns the ``result.json`` content.

    ``backend``/``judge`` may be passed to reuse loaded models across prompts; otherwise they are loaded from
    ``cfg.model``/``cfg.judge``. ``resume`` reuses the evaluations in ``progress.jsonl`` of the same folder.
    ``extra_metrics(user_images, best_images, seeds)`` adds measurements of the final images (e.g. the shapes
    world's ground-truth faithfulness) to the result under ``"metrics"``. ``should_stop`` (e.g. a UI's cancel
    button) is asked between evaluations: once true the search stops, the best so far is kept and reported as usual,
    and the result says ``"cancelled": true``. One process at a time may write a folder:
    another one gets :class:`~dpo_diff.files.OutputLockedError` naming this one's pid.
    """
    from dpo_diff.files import output_lock
    from dpo_diff.loading import resolve_device

    built = space is None and not cfg.space  # no space given: the task's default space is built for the prompt
    full_space = resolve_space(cfg, space)
    for device, needed in ((cfg.device, backend is None), (cfg.judge_device or cfg.device, judge is None)):
        if needed:
            resolve_device(device)  # a clear error before anything is written or loaded
    space = select_target(full_space, cfg.task, cfg.target)
    out = Path(cfg.out)
    with output_lock(out):  # a busy folder is the first error, before the model's defaults are looked up
        check_models(None if backend is not None else cfg.model,
                     None if judge is not None or cfg.objective else cfg.judge)
        check_judge_specs(cfg, objective=judge is None)
        resolve_sampling(cfg, space, backend)  # before config.json is written: it records the values used
        prepare_folder(cfg, space, out, resume=resume, overwrite=overwrite)
        if built:
            save_built_space(full_space, cfg, out)
        problem = load_problem(cfg, space, backend, judge, constraint)
        warn_gpo_skip(cfg, problem)
        select_judges = load_select_judges(cfg)  # before the search: a missing model fails before any generation
        calibrate_run(cfg, problem)
        searched = run_search(cfg, problem, full_space, out, resume=resume, progress=progress,
                              should_stop=should_stop, select_judges=select_judges)
        return write_result(cfg, problem, full_space, searched, out, extra_metrics, progress)


def resolve_space(cfg: OptimizeConfig, space: SearchSpace | None) -> SearchSpace:
    """The full space of the run (``cfg.space`` loaded unless ``space`` is given); sets ``cfg.prompt`` to its
    prompt. An empty ``cfg.prompt`` is accepted only with a ``space`` object (never guessed from a file)."""
    from dpo_diff.space import load_space, load_spaces

    if space is None and not cfg.space:
        return default_space(cfg)
    if space is None:
        if not cfg.prompt.strip():
            prompts = list(load_spaces(cfg.space))
            shown = ", ".join(repr(p) for p in prompts[:3]) + (", ..." if len(prompts) > 3 else "")
            raise ValueError(f"--prompt is empty; give the prompt to optimize. {cfg.space} holds spaces for "
                             f"{len(prompts)} prompt(s): {shown}")
        space = load_space(cfg.space, cfg.prompt)
    if cfg.prompt.strip() and space.prompt.strip().lower() != cfg.prompt.strip().lower():
        raise ValueError(f"the space is for prompt {space.prompt!r}, not {cfg.prompt!r}")
    cfg.prompt = space.prompt
    return space


def uses_world(model: str) -> bool:
    """Whether ``model`` is the bundled shapes-world generator."""
    from dpo_diff.world import generator_path

    return bool(model) and Path(model).expanduser().resolve() == generator_path().resolve()


def default_space(cfg: OptimizeConfig) -> SearchSpace:
    """The task's space for ``cfg.prompt``, built as ``space build`` and ``bench`` build it
    (:func:`~dpo_diff.space_builder.build_task_spaces`): the hybrid space for improve (antonym terms with synonym
    swaps), synonym rewrites for attack, rewrites pre-filtered by the meaning constraint; the shapes world's own
    substitutes for the bundled world model."""
    from dpo_diff.space_builder import build_task_spaces

    prompt = " ".join(cfg.prompt.split())
    if not prompt:
        raise ValueError("--prompt is empty; give the text you want to generate")
    report = build_task_spaces([prompt], cfg.task, world=uses_world(cfg.model),
                               similarity_threshold=cfg.similarity_threshold, similarity_model=cfg.similarity_model)
    if prompt in report.failed:
        raise ValueError(f"building the {cfg.task} space for {prompt!r} failed: {report.failed[prompt]}")
    space = report.spaces[prompt]
    cfg.prompt = space.prompt
    return space


BUILT_SPACE = "space.json"  # the space optimize built when no --space was given


def save_built_space(space: SearchSpace, cfg: OptimizeConfig, out: Path) -> None:
    """Save the space ``optimize`` built into the run folder and say so."""
    from dpo_diff.space import save_spaces

    save_spaces([space], out / BUILT_SPACE)
    source = "the shapes world's substitutes" if uses_world(cfg.model) else "the WordNet lexicon"
    print(f"dpo-diff: no --space given: built the {cfg.task} space for {space.prompt!r} from {source} "
          f"({len(space.slots)} slots, {space.num_candidates} candidates) -> {out / BUILT_SPACE}; edit it and pass "
          f"--space FILE to search your own")


def prepare_folder(cfg: OptimizeConfig, space: SearchSpace, out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to replace or mix runs, then write ``config.json`` (nothing else is written before the checks)."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if not resume and not overwrite and ((out / "progress.jsonl").exists() or (out / "result.json").exists()):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                         f"or choose another --out")
    record = {"config": cfg.to_dict(), "space": space.to_dict(), "environment": environment()}
    if resume and config_path.is_file():
        old = json.loads(config_path.read_text())
        same = {k: v for k, v in old.get("config", {}).items() if k != "out"} == {
            k: v for k, v in record["config"].items() if k != "out"}
        if not same or old.get("space") != record["space"]:
            raise ValueError(f"{config_path} was written by a different configuration, so --resume cannot "
                             f"continue it; pass --overwrite (instead of --resume) to replace that run, or choose "
                             f"another --out")
    atomic_write_text(config_path, strict_dumps(record, indent=2) + "\n")


def resolve_sampling(cfg: OptimizeConfig, space: SearchSpace, backend=None) -> None:
    """Fill ``cfg.steps``/``cfg.guidance`` left ``None`` with the backbone's pipeline defaults
    (:func:`pipeline_defaults`); the generator gets a negative prompt where ``space`` has negative slots (improve)
    or a fixed negative prompt."""
    if cfg.steps is not None and cfg.guidance is not None:
        return
    negative = bool(space.negative_prompt.strip()) or any(s.target == "negative" for s in space.slots)
    steps, guidance = pipeline_defaults(cfg.model, negative=negative, backend=backend)
    steps = steps if cfg.steps is None else cfg.steps
    guidance = guidance if cfg.guidance is None else cfg.guidance
    replace(cfg, steps=steps, guidance=guidance)  # checks the resolved values as any config's are checked
    cfg.steps, cfg.guidance = steps, guidance


SD_DEFAULTS = {"steps": 50, "guidance": 7.5}  # StableDiffusionPipeline's, as OptimizeConfig's field defaults


def pipeline_defaults(model: str, *, negative: bool, backend=None) -> tuple[int, float]:
    """``(steps, guidance)`` of the backbone's pipeline: its backend class's ``DEFAULTS`` (``backend``'s class, else
    the one ``model`` needs); ``negative``: the generator gets negative prompts, so a backbone whose default guidance
    disables them (FLUX) takes its ``negative_guidance``. A backend object without ``DEFAULTS`` (e.g. a test
    double) gets SD's."""
    cls = type(backend) if backend is not None else backend_class(model)
    defaults = getattr(cls, "DEFAULTS", SD_DEFAULTS)
    key = "negative_guidance" if negative and "negative_guidance" in defaults else "guidance"
    return defaults["steps"], defaults[key]


def check_models(model: str | None, judge: str | None) -> None:
    """Refuse a generator that is not a supported diffusers model (no such folder, no ``model_index.json``, an
    unsupported pipeline) or a judge that is not a model folder or hub id, naming the path. Called before anything is
    written to the output folder: loading would find the same only after ``config.json``. ``None``: not loaded."""
    from dpo_diff.loading import resolve_model

    if model is not None:
        backend_class(model)
    if judge is not None:
        resolve_model(judge, "CLIP judge", "config.json")


def check_judge_specs(cfg, objective: bool = True) -> None:
    """Refuse a judge spec of ``cfg`` (an :class:`OptimizeConfig` or a bench config) whose weights are not where it
    says: the objective's terms (unless ``objective`` is false: its judge is given loaded), the selection judges and
    the evaluation judges, checked as :func:`check_models` checks ``--judge``, without loading them
    (:func:`~dpo_diff.judges.spec.check_judge_sources`)."""
    from dpo_diff.judges.spec import check_judge_sources, parse_judges, parse_objective

    if objective and cfg.objective:
        check_judge_sources([t.judge for t in parse_objective(cfg.objective).terms], "objective term")
    check_judge_sources(parse_judges(list(cfg.selection.judges)), "selection judge")
    check_judge_sources(parse_judges(list(cfg.eval_judges)), "evaluation judge")


def warn_gpo_skip(cfg: OptimizeConfig, problem) -> None:
    """Say on stderr, before anything is generated, that the method's GPO stage will be skipped at this budget (the
    search's own rule, :func:`~dpo_diff.search.api.planned_gpo_shortfall`), instead of only in the notes afterwards.
    It cannot be said before the model loads: a GPO iteration's cost counts the scheduler's denoiser calls, which
    only the loaded backend knows (Heun and PNDM make more than one per step)."""
    import sys

    from dpo_diff.search.api import planned_gpo_shortfall

    planned = planned_gpo_shortfall(problem, method=cfg.method, budget=cfg.budget, seeds=cfg.seeds, gpo=cfg.gpo,
                                    selection=cfg.selection)
    if planned is None:
        return
    instead = {"gpo": "random search", "hybrid": f"evolution from a {cfg.proposal.kind} first population"}[cfg.method]
    share = f"its {cfg.gpo.budget_share:.0%} share of " if cfg.gpo.budget_share is not None else ""
    print(f"dpo-diff: warning: --method {cfg.method} will skip its GPO stage and run {instead} instead: {share}"
          f"--budget {cfg.budget:g} pays for {planned} GPO iteration(s) on {len(cfg.seeds)} seed(s), fewer than its "
          f"minimum of {cfg.gpo.min_iterations}; give a larger --budget (or fewer --seeds), or choose another "
          f"--method", file=sys.stderr, flush=True)


def backend_class(model: str) -> type:
    """The backend class that ``model`` (hub id or folder) needs, read from its ``model_index.json`` alone."""
    from dpo_diff.backends.base import backend_class_for, pipeline_class_name
    from dpo_diff.loading import ModelNotFoundError, resolve_model

    path, local_only = resolve_model(model, "diffusion model", "model_index.json")
    if not Path(path).is_dir():  # a hub id: only its model_index.json is fetched
        from huggingface_hub import hf_hub_download

        try:
            path = str(Path(hf_hub_download(path, "model_index.json", local_files_only=local_only)).parent)
        except Exception as e:  # noqa: BLE001 - any hub failure is "could not read"
            raise ModelNotFoundError(f"could not read model_index.json of {model!r}: {e}") from e
    return backend_class_for(pipeline_class_name(path))


def load_problem(cfg: OptimizeConfig, space: SearchSpace, backend=None, judge=None, constraint=None):
    """The :class:`~dpo_diff.problem.Problem` of the run, loading the models that were not passed in."""
    from dpo_diff.problem import Problem, SamplingConfig, Task

    if backend is None:
        from dpo_diff.backends.base import load_backend

        backend = load_backend(cfg.model, device=cfg.device, dtype=cfg.dtype, scheduler=cfg.scheduler)
    backend.check_prompt(space.prompt)
    if judge is None and cfg.objective:
        from dpo_diff.judges.objective import Objective
        from dpo_diff.judges.spec import shared_registry

        judge = Objective.from_spec(cfg.objective, shared_registry(cfg.judge_device or cfg.device), task=cfg.task)
    if judge is None:
        from dpo_diff.judges.clip import ClipJudge

        judge = ClipJudge.from_pretrained(cfg.judge, device=cfg.judge_device or cfg.device)
    from dpo_diff.constraint import MeaningConstraint, meaning_constraint_applies

    if constraint is None and meaning_constraint_applies(space, cfg.similarity_threshold,
                                                         world=uses_world(cfg.model)):
        constraint = MeaningConstraint(cfg.similarity_model, cfg.similarity_threshold).accepts
    sampling = SamplingConfig(cfg.steps, cfg.guidance, cfg.height, cfg.width, cfg.batch_size,
                              grad_checkpointing=cfg.grad_checkpointing)
    return Problem(space, Task(cfg.task), backend, judge, sampling, constraint)


def load_select_judges(cfg: OptimizeConfig) -> dict[str, Any]:
    """The selection judges of ``cfg.selection`` (``{spec: judge}``), loaded through the shared registry: the
    search's objective, the evaluators and other runs of the process reuse loaded models."""
    from dpo_diff.judges.evaluate import load_eval_judges
    from dpo_diff.judges.spec import shared_registry

    if not cfg.selection.judges:
        return {}
    return load_eval_judges(cfg.selection.judges, shared_registry(cfg.judge_device or cfg.device))


def calibrate_run(cfg: OptimizeConfig, problem) -> None:
    """Normalise an objective against the user prompt on every seed the run scores (search, validation, report);
    a single judge needs nothing."""
    from dpo_diff.judges.objective import calibrate_objective

    seeds = cfg.seeds + tuple(cfg.selection.validation_seeds) + cfg.report_seeds
    calibrate_objective(problem, seeds, cfg.seeds)


def final_judges(cfg: OptimizeConfig, problem, images, seeds_all: list[int]) -> dict[str, Any]:
    """``judges`` (every optimized judge or term and every ``eval_judges`` evaluator on the user's and the answer's
    images) and, with an objective, ``objective`` (its spec, calibration and whether the answer is feasible on the
    report seeds) for ``result.json``."""
    from dpo_diff.judges.evaluate import judge_table, load_eval_judges, objective_judges
    from dpo_diff.judges.objective import Objective
    from dpo_diff.judges.spec import shared_registry

    n_all, n_s = len(seeds_all), len(cfg.seeds)
    evaluators = load_eval_judges(cfg.eval_judges, shared_registry(cfg.judge_device or cfg.device))
    out: dict[str, Any] = {"judges": judge_table(objective_judges(problem.judge), evaluators, images[:n_all],
                                                 images[n_all:], problem.user_prompt, seeds_all, n_s)}
    if isinstance(problem.judge, Objective):
        import torch

        with torch.no_grad():
            values = problem.judge.term_losses(images[n_all + n_s:], problem.user_prompt).cpu()
        feasible = problem.judge.feasible(values[None], list(cfg.report_seeds))
        out["objective"] = {**problem.judge.to_dict(), "feasible_report": bool(feasible[0])}
    return out


def load_progress(path: Path) -> tuple[dict, float]:
    """Evaluations saved in ``progress.jsonl`` (by :attr:`~dpo_diff.search.base.Evaluation.key`: candidate, and
    fidelity for previews) and the search seconds they took; unreadable lines are skipped with a warning naming
    them."""
    from dpo_diff.files import read_jsonl
    from dpo_diff.search.base import Evaluation

    lines = read_jsonl(path, lambda d: (Evaluation.from_dict(d), float(d.get("elapsed_s", 0.0))), what="evaluation")
    return {ev.key: ev for ev, _ in lines.records}, max((t for _, t in lines.records), default=0.0)


GPO_STATE = "gpo_state.pt"  # the GPO checkpoint of a run folder (continued exactly on --resume)


def save_gpo_state(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write must not leave a checkpoint that --resume cannot read."""
    import os

    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_gpo_state(path: Path) -> dict[str, Any] | None:
    """The GPO checkpoint of an interrupted run, or ``None`` (absent, or unreadable: GPO then learns again, with a
    warning, and still reuses every saved evaluation)."""
    import warnings

    import torch

    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "streams" not in ckpt:
            raise ValueError("not a checkpoint of this version")
        return ckpt
    except Exception as e:  # noqa: BLE001 - any unreadable file means: learn again
        warnings.warn(f"{path} cannot be used to continue GPO ({e}); GPO learns again", stacklevel=2)
        return None


class GenerationBar:
    """A terminal bar in full-generation equivalents. Evaluations set its position; between them it also moves with
    every batch ``problem`` generates, so re-ranking (inside the search, after its last evaluation) and the report's
    images show progress instead of silence."""

    def __init__(self, problem, show: bool, total: float, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="gen", disable=not show,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} gen [{elapsed}<{remaining}]{postfix}")
        self.problem, self.generated = problem, 0.0
        self._mark = self._written = (0.0, 0.0)
        problem.on_generated = self.on_generated

    def on_generated(self, n: float) -> None:
        self.generated += n
        if self.bar.n != self._written[0]:  # an evaluation moved the bar since: count on from there
            self._mark = (self.bar.n, self._written[1])
        base, seen = self._mark
        self.bar.n = min(self.bar.total, base + self.generated - seen)
        self._written = (self.bar.n, self.generated)
        self.bar.refresh()

    def close(self) -> None:
        self.problem.on_generated = None
        self.bar.close()


def run_search(cfg: OptimizeConfig, problem, full_space: SearchSpace, out: Path, *, resume: bool,
               progress: bool, should_stop: Callable[[], bool] | None = None,
               select_judges: dict[str, Any] | None = None) -> _Searched:
    """Search, saving every evaluation to ``progress.jsonl`` and the best so far to ``best.json`` as they come.

    The answer replaces the user prompt only if it beats it where it was chosen (search and validation seeds), by
    the search judge, or, when selection judges ran, by every selection judge (their verdict alone decides)."""
    from dpo_diff.files import append_jsonl
    from dpo_diff.search.api import search

    space, t0 = problem.space, time.perf_counter()
    progress_path = out / "progress.jsonl"
    preloaded, earlier = load_progress(progress_path) if resume else ({}, 0.0)
    if not resume and progress_path.exists():
        progress_path.unlink()
    tracker = GenerationBar(problem, progress, cfg.budget, f"{cfg.method} ({cfg.task})")
    bar = tracker.bar
    best_so_far: list = []

    def on_eval(ev) -> None:
        # Persist as we go: a crash or Ctrl-C leaves every finished evaluation and the best-so-far on disk.
        if ev.key not in preloaded:
            append_jsonl(progress_path, {**ev.to_dict(), "elapsed_s": earlier + time.perf_counter() - t0})
        bar.n = max(bar.n, ev.cost)  # the batch that made it may have moved the bar already
        if ev.fidelity != "full":  # a preview scores cheaply and is never the answer
            bar.refresh()
            return
        if not best_so_far or ev.objective < best_so_far[0].objective:
            best_so_far[:] = [ev]
            atomic_write_text(out / "best.json", strict_dumps(ev.to_dict(), indent=2) + "\n")
        bar.set_postfix(best=f"{problem.task.sign * best_so_far[0].objective:.4f}")
        bar.refresh()

    def on_iter(state) -> None:
        if state.log:
            bar.n = max(bar.n, state.log[-1]["cost"])  # anytime evaluations may have moved it further
            bar.set_postfix(gpo_loss=f"{state.log[-1]['loss']:.4f}")
        bar.refresh()
        save_gpo_state(out / GPO_STATE, state.checkpoint())

    user = space.render(space.default)
    if space.is_trivial:
        note = "the space offers no alternative to the user prompt (no slot has a second option); nothing to search"
        if full_space.meta.get("warning"):
            note += f" ({full_space.meta['warning']})"
        print(f"dpo-diff: {note}")
        tracker.close()
        return _Searched(None, user, space.default, note, t0, earlier)
    constraint, verdicts = problem.constraint, {"asked": 0, "accepted": 0}  # rewrites (not the user prompt)
    if constraint is not None:
        def counted(original: str, prompts: list[str]) -> list[bool]:
            ok = constraint(original, prompts)
            rewrites = [good for p, good in zip(prompts, ok) if p != user.prompt]
            verdicts["asked"] += len(rewrites)
            verdicts["accepted"] += sum(map(bool, rewrites))
            return ok

        problem.constraint = counted
    none_admissible = (f"no candidate passed the meaning constraint: every rewrite tried was rejected (threshold "
                       f"{cfg.similarity_threshold}); the user prompt is kept")
    try:
        result = search(problem, method=cfg.method, budget=cfg.budget, seeds=cfg.seeds, seed=cfg.seed, gpo=cfg.gpo,
                        epo=cfg.epo, selection=cfg.selection, mf=cfg.mf, tpe=cfg.tpe, llm=cfg.llm,
                        greedy=cfg.greedy, proposal=cfg.proposal, on_evaluation=on_eval, on_iteration=on_iter,
                        preloaded=preloaded,
                        gpo_resume=load_gpo_state(out / GPO_STATE) if resume else None,
                        time_budget=cfg.time_budget, should_stop=should_stop, select_judges=select_judges or None)
    except ValueError:
        if not verdicts["asked"] or verdicts["accepted"] or preloaded:
            raise
        # Nothing passed the meaning constraint, so nothing could be evaluated: a result (the user prompt is kept),
        # not a failure, and a rerun gives the same answer.
        print(f"dpo-diff: {none_admissible}")
        tracker.close()
        return _Searched(None, user, space.default, none_admissible, t0, earlier)
    finally:
        problem.constraint = constraint
    bar.n = result.cost  # re-ranking included: all the search was charged
    tracker.close()
    # Every rewrite rejected and nothing else scored than the user prompt itself (a hybrid space's negative terms
    # leave the prompt's text alone: candidates of those alone pass and may be the answer).
    only_user = all(e.candidate == space.default for e in result.evaluations)
    if verdicts["asked"] and not verdicts["accepted"] and not preloaded and only_user:
        print(f"dpo-diff: {none_admissible}")
        atomic_write_text(out / "search.json", strict_dumps(result.to_dict(), indent=2) + "\n")
        return _Searched(result, user, space.default, none_admissible, t0, earlier)
    atomic_write_text(out / "search.json", strict_dumps(result.to_dict(), indent=2) + "\n")
    selection = result.extra.get("selection", {})
    rows = selection.get("candidates")
    if rows and selection.get("select_judges"):
        # The agreement rule already compared every candidate with the user prompt on the validation seeds; the
        # search judge must not overrule it either way (gaming it is what the selection judges guard against).
        note = selection_note(selection)
        if selection["kept_user"]:
            return _Searched(result, user, space.default, note, t0, earlier)
        return _Searched(result, space.render(result.best.candidate), result.best.candidate, note, t0, earlier)
    # The user prompt where the answer is chosen: the baseline every method must beat (not charged to the budget).
    # Generated only here, where it decides: with selection judges the re-ranking has already generated and compared
    # the user prompt's validation images, and generating them twice would only cost time.
    before_search, _ = problem.losses([user], cfg.judged_seeds)
    best_objective = rows[0]["objective"] if rows else result.best.objective
    user_losses = before_search[0] if rows else before_search[0, : len(cfg.seeds)]
    if best_objective < float(problem.task.objective(user_losses.mean())):
        return _Searched(result, space.render(result.best.candidate), result.best.candidate, "", t0, earlier)
    where = "search and validation seeds" if rows else "search seeds"
    note = f"no candidate beat the user prompt on the {where}; the user prompt is kept"
    return _Searched(result, user, space.default, note, t0, earlier)


def selection_note(selection: dict[str, Any]) -> str:
    """The run's note on the selection judges' verdict: who vetoed, and whether the user prompt was kept."""
    n = selection["compared"]
    vetoes = ", ".join(f"{name} vetoed {k} of {n}" for name, k in selection["vetoes"].items() if k)
    if selection["kept_user"]:
        why = f" ({vetoes})" if vetoes else " (the search's best was the user prompt itself)"
        return (f"no re-ranked candidate was preferred to the user prompt by every selection judge{why}; the user "
                f"prompt is kept")
    if vetoes:
        return f"the answer is the first candidate every selection judge prefers to the user prompt ({vetoes})"
    return ""


def selection_line(selection: dict[str, Any]) -> str:
    """The selection judges' verdict in one line (summaries, the web app): who vetoed how many re-ranked candidates,
    and their cost beside the generations (judge scorings; the user prompt's uncharged baseline images)."""
    n = selection["compared"]
    vetoes = ", ".join(f"{name} {k}" for name, k in selection["vetoes"].items() if k) or "none"
    verdict = "user prompt kept" if selection["kept_user"] else "answer preferred by every judge"
    return (f"selection judges {', '.join(selection['select_judges'])}: {verdict}; vetoes of {n} re-ranked: "
            f"{vetoes} ({selection['select_calls']} judge scorings, {selection['baseline_generations']} uncharged "
            f"baseline generations)")


def write_result(cfg: OptimizeConfig, problem, full_space: SearchSpace, found: _Searched, out: Path,
                 extra_metrics: Callable[[Any, Any, list[int]], dict[str, Any]] | None,
                 progress: bool = False) -> dict[str, Any]:
    """Final numbers on the search seeds and the held-out report seeds (user prompt vs best), the PNGs and
    ``result.json``."""
    import torch

    search_seconds = found.seconds()
    space, user, best_pair = problem.space, problem.space.render(problem.space.default), found.best_pair
    seeds_all = list(cfg.seeds) + list(cfg.report_seeds)
    pairs = [user] if best_pair == user else [user, best_pair]
    tracker = GenerationBar(problem, progress, len(pairs) * len(seeds_all), "user vs best on all seeds")
    losses, images = problem.losses(pairs, seeds_all, keep_images=True)
    tracker.close()
    if best_pair == user:
        losses, images = losses.repeat(2, 1), torch.cat([images, images])
    n_s = len(cfg.seeds)
    _save_images(out, images, seeds_all, user, best_pair, losses, len(cfg.seeds))

    def summary(row) -> dict[str, Any]:
        search, report = row[:n_s].tolist(), row[n_s:].tolist()
        return {"search_losses": dict(zip(map(str, cfg.seeds), search)), "search_mean": _mean(search),
                "report_losses": dict(zip(map(str, cfg.report_seeds), report)), "report_mean": _mean(report)}

    searched = found.search
    result = {
        "user_prompt": space.prompt,
        "task": cfg.task,
        "method": cfg.method,
        "best": {**best_pair.to_dict(), "candidate": list(found.best_candidate),
                 "changes": space.describe(found.best_candidate)},
        "before": summary(losses[0]),
        "after": summary(losses[1]),
        "cost": searched.cost if searched else 0.0,
        "budget": cfg.budget,
        "evaluated": len(searched.evaluations) if searched else 0,
        "rejected_by_constraint": len(searched.rejected) if searched else 0,
        "search_seconds": search_seconds,  # all parts of a resumed run (each up to its last saved evaluation)
        "total_seconds": found.seconds(),
        "note": found.note,
        "slots": len(space.slots),
        "space_size": space.num_candidates,
        "full_space_slots": len(full_space.slots),
        "search_notes": search_notes(searched),
        "timings": dict(searched.timings) if searched else {},  # wall seconds per phase (this process's part)
        "cancelled": bool(searched and searched.extra.get("cancelled")),  # stopped early: best so far
    }
    selection = searched.extra.get("selection", {}) if searched else {}
    if selection.get("select_judges"):  # the agreement rule's record (absent without selection judges, as before)
        result["selection"] = selection
    if extra_metrics is not None:
        n_all = len(seeds_all)
        result["metrics"] = extra_metrics(images[:n_all], images[n_all:], seeds_all)
    result.update(final_judges(cfg, problem, images, seeds_all))
    atomic_write_text(out / "result.json", strict_dumps(result, indent=2) + "\n")
    return result


def search_notes(searched) -> list[str]:
    """What the search decided on its own that a user should know (GPO skipped, re-ranking skipped, enumeration)."""
    if searched is None:
        return []
    extra = searched.extra
    notes = [extra["gpo_skipped"]] if extra.get("gpo_skipped") else []
    if extra.get("selection", {}).get("skipped"):
        notes.append("re-ranking skipped: " + extra["selection"]["skipped"])
    if extra.get("enumerated"):
        notes.append("every candidate of the space fit the budget: all were evaluated")
    return notes


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _save_images(out: Path, images, seeds: list[int], user, best, losses, searched_on: int) -> None:
    """The PNGs of both prompts on every seed and ``comparison.png``: each image captioned with its seed (search or
    held-out: the first ``searched_on`` seeds were searched on) and its loss, so the grid reads without result.json."""
    from dpo_diff.images import save_grid, save_png

    img_dir = out / "images"
    img_dir.mkdir(exist_ok=True)
    n = len(seeds)
    for j, s in enumerate(seeds):
        save_png(images[j], img_dir / f"user_seed{s}.png", min_side=128)
        save_png(images[n + j], img_dir / f"best_seed{s}.png", min_side=128)
    neg = f" | neg: {best.negative_prompt}" if best.negative_prompt else ""
    kinds = ["search" if j < searched_on else "held-out" for j in range(n)]
    captions = [[f"seed {s} ({kind})\nloss {float(x):.4f}" for s, kind, x in zip(seeds, kinds, row)]
                for row in losses[:2]]
    save_grid([list(images[:n]), list(images[n:])], [f"user: {user.prompt}", f"best: {best.prompt}{neg}"],
              out / "comparison.png", captions=captions)
