"""One benchmark job: a (prompt, method) pair, run to a record of the results file.

Search methods (``random``, ``epo``, ``gpo``, ``hybrid``) go through :func:`dpo_diff.optimize.optimize`, the same
per-prompt run as ``dpo-diff optimize`` (so a job killed mid-search resumes from its ``progress.jsonl``). Baselines
(``user``: the prompt as given; ``promptist``: the GPT-2 rewrite) are evaluated the same way without a search. Every
job then measures the user prompt and the method's prompt on the search seeds and on held-out report seeds, with the
judge (and the shapes world's ground-truth checker with ``world``).

Models are loaded once per process (:func:`models_for`): a local run loads them once, a Ray worker once per worker.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_diff.bench.config import SEARCH_METHODS, BenchConfig
from dpo_diff.bench.results import job_dir, prompt_id
from dpo_diff.files import strict_dumps
from dpo_diff.space import PromptPair, SearchSpace, atomic_write_text


@dataclass(frozen=True)
class Job:
    """A unit of work: ``method`` on ``space.prompt``; ``config_key`` ties its record to the benchmark's settings."""

    prompt: str
    method: str
    space: dict[str, Any]
    config_key: str

    @property
    def folder(self) -> str:
        return job_dir(self.prompt, self.method)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "method": self.method, "space": self.space, "config_key": self.config_key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(d["prompt"], d["method"], d["space"], d["config_key"])


@dataclass
class Models:
    """Everything loaded for a benchmark in one process."""

    device: str
    backend: Any
    judge: Any
    checker: Any = None
    _constraint: Any = None
    _promptist: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def constraint(self, cfg: BenchConfig, space: SearchSpace):
        """The meaning constraint for spaces that rewrite the prompt (``None`` when off or not needed)."""
        from dpo_diff.constraint import MeaningConstraint, meaning_constraint_applies

        if not meaning_constraint_applies(space, cfg.similarity_threshold, world=cfg.world):
            return None
        if self._constraint is None:

            self._constraint = MeaningConstraint(cfg.similarity_model, cfg.similarity_threshold).accepts
        return self._constraint

    def promptist(self, cfg: BenchConfig):
        if self._promptist is None:
            from dpo_diff.baselines.promptist import PromptistRewriter

            self._promptist = PromptistRewriter.from_pretrained(cfg.promptist_model,
                                                                tokenizer=cfg.promptist_tokenizer, device=self.device)
        return self._promptist


_MODELS: dict[str, Models] = {}


def models_for(cfg: BenchConfig) -> Models:
    """Load (once per process and config) the generator, judge and, for the world, the checker."""
    key = json.dumps({**cfg.to_dict(), "methods": None}, sort_keys=True, default=str)
    if key not in _MODELS:
        from dpo_diff.backends.base import load_backend
        from dpo_diff.judges.clip import ClipJudge
        from dpo_diff.loading import resolve_device

        device = resolve_device(cfg.device)
        model, judge = cfg.model_paths()
        if cfg.world:
            from dpo_diff.world import verify_model_folder

            for kind in ("generator", "judge", "checker"):
                verify_model_folder(kind)
        backend = load_backend(model, device=device, dtype=cfg.dtype, scheduler=cfg.scheduler)
        if cfg.objective:
            from dpo_diff.judges.objective import Objective
            from dpo_diff.judges.spec import shared_registry

            clip = Objective.from_spec(cfg.objective, shared_registry(device), task=cfg.task)
        else:
            clip = ClipJudge.from_pretrained(judge, device=device)
        checker = None
        if cfg.world:
            from dpo_diff.world import load_checker

            checker = load_checker(device=device)
        _MODELS.clear()  # one benchmark per process at a time: free the previous models
        _MODELS[key] = Models(device, backend, clip, checker)
    return _MODELS[key]


def run_job(cfg: BenchConfig, job: Job, workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run ``job`` with its files in ``workdir``; return its record (see :func:`make_record`)."""
    from dpo_diff.optimize import OptimizeConfig, optimize

    t0 = time.perf_counter()
    models = models_for(cfg)
    space = SearchSpace.from_dict(job.space)
    workdir = Path(workdir)
    metric = None
    if models.checker is not None:
        from dpo_diff.world import faithfulness_metric

        metric = faithfulness_metric(models.checker, space.prompt, len(cfg.seeds))
    model, judge = cfg.model_paths()
    ocfg = OptimizeConfig(
        prompt=space.prompt, task=cfg.task, model=model, judge=judge,
        # Baselines are not searches; "random" only stands in for OptimizeConfig's validation (no GPO settings).
        method=job.method if job.method in SEARCH_METHODS else "random",
        budget=cfg.budget, seeds=cfg.seeds, report_seeds=cfg.report_seeds, seed=cfg.seed, steps=cfg.steps,
        guidance=cfg.guidance, scheduler=cfg.scheduler, dtype=cfg.dtype, device=models.device,
        batch_size=cfg.batch_size, height=cfg.height, width=cfg.width, out=str(workdir),
        similarity_threshold=None if cfg.world else cfg.similarity_threshold, similarity_model=cfg.similarity_model,
        gpo=cfg.gpo, epo=cfg.epo, mf=cfg.mf, tpe=cfg.tpe, llm=cfg.llm, greedy=cfg.greedy, proposal=cfg.proposal,
        selection=cfg.selection,
        time_budget=cfg.time_budget,
        objective=cfg.objective, eval_judges=cfg.eval_judges,
    )
    extra: dict[str, Any] = {}
    if job.method in ("user", "promptist"):
        if job.method == "promptist":
            rewriter = models.promptist(cfg)
            best = PromptPair(rewriter.rewrite([space.prompt])[0], space.negative_prompt)
            extra["rewriter"] = rewriter.describe()
        else:
            best = PromptPair(space.prompt, space.negative_prompt)
        result = evaluate_fixed(ocfg, space, best, models, metric, job.method)
    else:
        result = optimize(ocfg, space=space, backend=models.backend, judge=models.judge,
                          constraint=models.constraint(cfg, space), progress=False, resume=True,
                          extra_metrics=metric)
    history, by_time = [], []
    search_file = workdir / "search.json"
    sign = 1.0 if cfg.task == "improve" else -1.0
    if job.method not in ("user", "promptist") and search_file.is_file():
        # (cost, best objective so far) -> (cost, best loss so far); entries before the first evaluation are NaN.
        history = [[c, sign * o] for c, o in json.loads(search_file.read_text())["history"]
                   if o is not None and o == o]
    if job.method not in ("user", "promptist"):
        by_time = time_history(workdir / "progress.jsonl", sign)
    return make_record(cfg, job, result, history, time.perf_counter() - t0, extra, by_time)


def time_history(progress: Path, sign: float) -> list[list[float]]:
    """``[elapsed search seconds, best loss so far]`` at each evaluation of ``progress.jsonl``: the wall-clock view
    of the search beside ``history`` (the cost view). A resumed run's evaluations keep the seconds they were made
    at."""
    from dpo_diff.files import read_jsonl

    if not progress.is_file():
        return []
    rows = read_jsonl(progress, lambda d: (float(d["elapsed_s"]), float(d["objective"])), what="evaluation",
                      warn=False).records
    out, best = [], float("inf")
    for seconds, objective in sorted(rows):
        best = min(best, objective)
        out.append([seconds, sign * best])
    return out


def evaluate_fixed(ocfg, space: SearchSpace, best: PromptPair, models: Models, metric, method: str) -> dict[str, Any]:
    """A baseline's job: no search; the same before/after evaluation and files as
    :func:`~dpo_diff.optimize.optimize`."""
    import torch

    from dpo_diff.optimize import _save_images, calibrate_run, environment, final_judges
    from dpo_diff.problem import Problem, SamplingConfig, Task

    out = Path(ocfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = {**ocfg.to_dict(), "method": method}
    atomic_write_text(out / "config.json", strict_dumps({"config": cfg_dict, "space": space.to_dict(),
                                                       "environment": environment()}, indent=2) + "\n")
    t0 = time.perf_counter()
    sampling = SamplingConfig(ocfg.steps, ocfg.guidance, ocfg.height, ocfg.width, ocfg.batch_size)
    problem = Problem(space, Task(ocfg.task), models.backend, models.judge, sampling)
    calibrate_run(ocfg, problem)
    user = PromptPair(space.prompt, space.negative_prompt)
    seeds_all = list(ocfg.seeds) + list(ocfg.report_seeds)
    pairs = [user] if best == user else [user, best]
    losses, images = problem.losses(pairs, seeds_all, keep_images=True)
    if best == user:
        losses, images = losses.repeat(2, 1), torch.cat([images, images])
    _save_images(out, images, seeds_all, user, best, losses, len(ocfg.seeds))
    n_s, n_all = len(ocfg.seeds), len(seeds_all)

    def summary(row) -> dict[str, Any]:
        search, report = row[:n_s].tolist(), row[n_s:].tolist()
        return {"search_losses": dict(zip(map(str, ocfg.seeds), search)),
                "report_losses": dict(zip(map(str, ocfg.report_seeds), report))}

    result: dict[str, Any] = {
        "user_prompt": space.prompt, "task": ocfg.task, "method": method,
        "best": {**best.to_dict(), "candidate": None, "changes": [] if best == user else [f"rewrite: {best.prompt}"]},
        "before": summary(losses[0]), "after": summary(losses[1]), "cost": 0.0, "budget": 0.0, "evaluated": 0,
        "note": "", "slots": 0, "space_size": 1, "total_seconds": time.perf_counter() - t0,
    }
    if metric is not None:
        result["metrics"] = metric(images[:n_all], images[n_all:], seeds_all)
    result.update(final_judges(ocfg, problem, images, seeds_all))
    atomic_write_text(out / "result.json", strict_dumps(result, indent=2) + "\n")
    return result


def record_judges(result: dict[str, Any], report: list[str]) -> dict[str, Any]:
    """Cross-judge fields of a record: per judge its role and the report-seed losses of the user prompt and the
    answer (``judges``), and whether an objective's constraints hold on the report seeds (``feasible``)."""
    out: dict[str, Any] = {}
    if result.get("judges"):
        out["judges"] = {name: {"role": j["role"], "user": [j["user"]["report_losses"][s] for s in report],
                                "best": [j["best"]["report_losses"][s] for s in report]}
                         for name, j in result["judges"].items()}
    if "objective" in result:
        out["feasible"] = result["objective"]["feasible_report"]
    return out


def make_record(cfg: BenchConfig, job: Job, result: dict[str, Any], history: list, seconds: float,
                extra: dict[str, Any], by_time: list | None = None) -> dict[str, Any]:
    """The results-file record of a finished job: everything the report needs, nothing that varies between runs of
    the same command except the wall-clock fields (``seconds``, ``search_seconds``, ``timings``, ``by_time`` as
    ``time_history``)."""
    seeds, report = [str(s) for s in cfg.seeds], [str(s) for s in cfg.report_seeds]
    faith = None
    if "metrics" in result:
        m = result["metrics"]
        faith = {"user": m["user"]["report"], "best": m["best"]["report"]}
    folder = job.folder
    return {
        "config_key": job.config_key,
        "prompt_id": prompt_id(job.prompt),
        "prompt": job.prompt,
        "method": job.method,
        "task": cfg.task,
        "best": {"prompt": result["best"]["prompt"], "negative_prompt": result["best"]["negative_prompt"],
                 "changes": result["best"].get("changes", [])},
        "seeds": list(cfg.seeds),
        "report_seeds": list(cfg.report_seeds),
        "search_losses": [result["after"]["search_losses"][s] for s in seeds],
        "report_losses": [result["after"]["report_losses"][s] for s in report],
        "user_search_losses": [result["before"]["search_losses"][s] for s in seeds],
        "user_report_losses": [result["before"]["report_losses"][s] for s in report],
        "cost": result["cost"],
        "budget": cfg.budget if job.method not in ("user", "promptist") else 0.0,
        "evaluated": result["evaluated"],
        "rejected_by_constraint": result.get("rejected_by_constraint", 0),
        "history": history,
        "note": result["note"],
        "search_notes": result.get("search_notes", []),  # wall seconds per phase: the job's result.json
        "slots": result["slots"],
        "space_size": result["space_size"],
        "faithfulness": faith,
        **record_judges(result, report),
        **({"selection": result["selection"]} if "selection" in result else {}),  # selection judges' verdict
        "images": {"user": [f"{folder}/images/user_seed{s}.png" for s in report],
                   "best": [f"{folder}/images/best_seed{s}.png" for s in report]},
        "seconds": seconds,
        # The wall-clock view of the budget (absent from records of older versions): search seconds as in
        # result.json, wall seconds per phase, and the best loss by elapsed search seconds.
        "search_seconds": result.get("search_seconds", 0.0),  # a baseline searches nothing
        "timings": result.get("timings", {}),
        "time_history": by_time or [],
        **({"extra": extra} if extra else {}),
    }
