"""The benchmark driver: prompts x methods at one budget, skipping finished work, locally or on Ray.

Example::

    from dpo_diff.bench.config import BenchConfig
    from dpo_diff.bench.runner import run_bench
    cfg = BenchConfig(task="improve", model="CompVis/stable-diffusion-v1-4", seeds=(0, 1, 2))
    run_bench(cfg, "hard_prompts.json", "runs/bench")   # then: dpo-diff report runs/bench

Order of work, chosen so that a refusal or a failed connection leaves no trace in the folder: read the prompts,
check the folder's settings against ours, connect to Ray, then write ``bench.json`` and ``spaces.json`` and run the
jobs that have no record yet, appending each record as it arrives.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_diff.bench.config import SEARCH_METHODS, BenchConfig, BenchError, diff_settings
from dpo_diff.bench.jobs import Job, run_job
from dpo_diff.bench.results import (
    FAILURES,
    MANIFEST,
    RESULTS,
    SPACES,
    append_failure,
    append_record,
    index_jobs,
    load_records,
    read_manifest,
)
from dpo_diff.files import output_lock, strict_dumps
from dpo_diff.prompt_sets import PromptSet, read_prompt_set
from dpo_diff.space import SearchSpace, atomic_write_text

JobFn = Callable[[BenchConfig, Job, str], dict[str, Any]]


@dataclass
class BenchSummary:
    out: str
    prompts: int
    methods: tuple[str, ...]
    already_done: int
    ran: int
    failed: list[dict[str, Any]] = field(default_factory=list)  # jobs of this run that failed (see FAILURES)

    @property
    def total(self) -> int:
        return self.prompts * len(self.methods)


@dataclass
class RayOptions:
    """``address`` None starts a local Ray instance with ``workers`` CPUs; otherwise connects to the cluster."""

    address: str | None = None
    workers: int | None = None
    gpus_per_job: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_job: float = 1.0
    retries: int = 2

    def __post_init__(self) -> None:
        import math

        checks = (("--ray-workers", self.workers, self.workers is None or self.workers >= 1, "at least 1"),
                  ("--ray-gpus-per-job", self.gpus_per_job,
                   self.gpus_per_job is None or (math.isfinite(self.gpus_per_job) and self.gpus_per_job >= 0),
                   "a finite number >= 0"),
                  ("--ray-cpus-per-job", self.cpus_per_job,
                   math.isfinite(self.cpus_per_job) and self.cpus_per_job > 0, "a finite number > 0"),
                  ("--retries", self.retries, self.retries >= 0, "at least 0"))
        for flag, value, ok, allowed in checks:
            if not ok:
                raise BenchError(f"{flag} must be {allowed}, got {value}")


def run_bench(cfg: BenchConfig, prompts: str | os.PathLike[str] | PromptSet, out: str | os.PathLike[str], *,
              column: str | None = None, ray: RayOptions | None = None, argv: list[str] | None = None,
              log: Callable[[str], None] = print, job_fn: JobFn | None = None, fail_fast: bool = False
              ) -> BenchSummary:
    """Run every method of ``cfg`` on every prompt not yet done in ``out``; see the module docstring.

    A job that fails is recorded in ``DIR/failures.jsonl`` (shown by the report) and the others go on; a rerun
    retries it. ``fail_fast`` stops at the first failed job instead.

    Raises:
        BenchError: ``out`` holds results of other settings, a prompt has no space, Ray is unreachable, or (with
            ``fail_fast``) a job failed (finished records are kept; rerunning the same command resumes).
    """
    out = Path(out)
    pset = prompts if isinstance(prompts, PromptSet) else read_prompt_set(prompts, column=column)
    if ray is None:
        from dpo_diff.loading import resolve_device

        resolve_device(cfg.device)  # a Ray cluster's devices are checked on its workers
    with output_lock(out):  # one writer per folder: a second bench on it is refused, naming this one's pid
        return _run_locked(cfg, pset, out, ray, argv, log, job_fn or run_job, fail_fast)


def _run_locked(cfg: BenchConfig, pset: PromptSet, out: Path, ray: RayOptions | None, argv: list[str] | None,
                log: Callable[[str], None], job_fn: JobFn, fail_fast: bool) -> BenchSummary:

    from dpo_diff.optimize import environment

    key = cfg.key()
    check_folder(out, cfg)
    if cfg.spaces:  # a bad spaces file is refused before the folder is touched
        from dpo_diff.space import load_spaces

        load_spaces(cfg.spaces)
    if ray is None and job_fn is run_job:  # the models this process will load (a Ray worker checks its own)
        from dpo_diff.optimize import check_judge_specs, check_models

        model, judge = cfg.model_paths()
        check_models(model, None if cfg.objective else judge)  # a bad path is refused before anything is written
        check_judge_specs(cfg)  # and so is one in a judge spec
    executor = None
    if ray is not None:
        from dpo_diff.bench.ray_executor import RayExecutor

        executor = RayExecutor(ray, log=log)
        executor.start()  # raises before anything is written when the cluster cannot be reached
    try:
        out.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(out) or {"config": cfg.to_dict(), "config_key": key,
                                          "settings": cfg.keyed_settings(), "method_settings": {}, "invocations": []}
        manifest["config"]["methods"] = list(dict.fromkeys([*manifest["config"]["methods"], *cfg.methods]))
        for m in cfg.methods:
            manifest["method_settings"][m] = {"key": cfg.method_key(m), **cfg.method_settings(m)}
        manifest["invocations"].append({
            "argv": argv if argv is not None else sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "methods": list(cfg.methods), "device": cfg.device, "batch_size": cfg.batch_size,
            "ray": None if ray is None else vars(ray), "prompt_set": pset.to_dict(), "environment": environment(),
        })
        atomic_write_text(out / MANIFEST, strict_dumps(manifest, indent=2, default=str) + "\n")
        spaces = prepare_spaces(cfg, pset.prompts, out)
        check_spaces_fit_task(cfg, spaces)
        done = {(r["prompt"], r["method"]) for r in load_records(out)}
        method_keys = {m: cfg.method_key(m) for m in cfg.methods}
        jobs = [Job(p, m, spaces[p].to_dict(), method_keys[m]) for p in pset.prompts for m in cfg.methods
                if (p, m) not in done]
        index_jobs(out, [(p, m) for p in pset.prompts for m in cfg.methods])  # folders are hashes: say whose
        n_total = len(pset.prompts) * len(cfg.methods)
        already = n_total - len(jobs)
        log(f"{pset.summary()}\n{n_total} jobs ({len(pset.prompts)} prompts x {len(cfg.methods)} methods): "
            f"{already} already done, {len(jobs)} to run -> {out / RESULTS}")
        counter = [already]
        failed: list[dict[str, Any]] = []

        def on_record(record: dict[str, Any]) -> None:
            append_record(out, record)
            counter[0] += 1
            log(progress_line(record, counter[0], n_total))

        def on_failure(job: Job, error: str) -> None:
            if fail_fast:
                raise BenchError(f"job ({job.prompt!r}, {job.method}) failed: {error}. {counter[0]} finished jobs "
                                 f"are saved; rerun the same command to resume")
            failed.append(append_failure(out, job.prompt, job.method, error))
            log(f"[failed] {job.method:9s} {job.prompt[:48]!r}: {error} (recorded in {out / FAILURES}; the other "
                f"jobs go on, a rerun retries it)")

        if executor is not None:
            executor.run(cfg, jobs, out, on_record, job_fn, on_failure)
        else:
            for job in jobs:
                try:
                    record = job_fn(cfg, job, str(out / job.folder))
                except (KeyboardInterrupt, BenchError):
                    raise
                except Exception as e:  # noqa: BLE001 - one job's failure is recorded, never the bench's end
                    on_failure(job, f"{type(e).__name__}: {e}")
                    continue
                on_record(record)
    finally:
        if executor is not None:
            executor.stop()
    return BenchSummary(str(out), len(pset.prompts), cfg.methods, already, len(jobs) - len(failed), failed)


def check_folder(out: Path, cfg: BenchConfig) -> None:
    """Refuse a folder whose results come from other settings (nothing is written here)."""
    manifest = read_manifest(out)
    hint = (f"to continue those results rerun with their settings (in {out / MANIFEST}); to start over use a new "
            f"--out folder (or delete {out})")
    if manifest is None:
        if (out / RESULTS).exists():
            raise BenchError(f"{out / RESULTS} exists but {out / MANIFEST} does not, so its settings are unknown. "
                             f"{hint}")
        return
    if manifest.get("config_key") != cfg.key():
        changes = diff_settings(manifest.get("settings", {}), cfg.keyed_settings())
        raise BenchError(f"{out} holds benchmark results of different settings ({'; '.join(changes[:6])}); "
                         f"refusing to mix them. {hint}")
    for r in load_records(out):
        m = r.get("method")
        if m in cfg.methods and r.get("config_key") != cfg.method_key(m):
            old = {k: v for k, v in manifest.get("method_settings", {}).get(m, {}).items() if k != "key"}
            changes = diff_settings(old, cfg.method_settings(m))
            raise BenchError(f"{out / RESULTS} holds {m} results of different {m} settings "
                             f"({'; '.join(changes[:6]) or 'see ' + MANIFEST}); refusing to mix them. {hint}")


def prepare_spaces(cfg: BenchConfig, prompts: list[str], out: Path) -> dict[str, SearchSpace]:
    """The search space of every prompt, saved to ``DIR/spaces.json`` (kept across resumes)."""
    from dpo_diff.space import load_spaces, save_spaces

    path = out / SPACES
    if cfg.spaces:
        given = load_spaces(cfg.spaces)
        lower = {k.strip().lower(): v for k, v in given.items()}
        missing = [p for p in prompts if p.strip().lower() not in lower]
        if missing:
            raise BenchError(f"{len(missing)} prompts have no space in {cfg.spaces}, e.g. {missing[:3]}; build them "
                             f"with 'dpo-diff space build' or pass --space-kind to build them here")
        spaces = {p: lower[p.strip().lower()] for p in prompts}
        old = load_spaces(path) if path.is_file() else {}
        save_spaces({**old, **spaces}.values(), path)
        return spaces
    from dpo_diff.space_builder import build_task_spaces

    # One way to build a space (as 'space build' and 'optimize' without --space): for attack the meaning
    # pre-filter drops substitutions that change what the prompt means before any job searches them.
    report = build_task_spaces(prompts, cfg.task, kind=cfg.space_kind, world=cfg.world,
                               similarity_threshold=cfg.similarity_threshold,
                               similarity_model=cfg.similarity_model, out=path)
    if report.failed:
        first = next(iter(report.failed.items()))
        raise BenchError(f"building {cfg.resolved_space_kind} spaces failed for {len(report.failed)} prompts, "
                         f"e.g. {first[0]!r}: {first[1]}")
    spaces = {p: report.spaces[p] for p in prompts}
    return spaces


def check_spaces_fit_task(cfg: BenchConfig, spaces: dict[str, SearchSpace]) -> None:
    """Refuse spaces that have slots, but none of the kind the task searches (e.g. synonyms for improve)."""
    from dpo_diff.optimize import select_target

    if not any(m in SEARCH_METHODS for m in cfg.methods):
        return
    for space in spaces.values():
        try:
            select_target(space, cfg.task, "auto")
        except ValueError as e:
            raise BenchError(str(e)) from None


def progress_line(record: dict[str, Any], i: int, n: int) -> str:
    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    before, after = mean(record["user_report_losses"]), mean(record["report_losses"])
    neg = f" | neg: {record['best']['negative_prompt']}" if record["best"]["negative_prompt"] else ""
    # A stage the method skipped (GPO's share too small) or a search that found nothing admissible: said, not hidden.
    notes = [n for n in record.get("search_notes", []) if "skipped" in n]
    if record.get("note", "").startswith("no candidate passed"):
        notes.append(record["note"])
    return (f"[{i}/{n}] {record['method']:9s} {record['prompt'][:48]!r}: report loss {before:.4f} -> {after:.4f} "
            f"(cost {record['cost']:.1f}, {record['seconds']:.1f} s){neg[:60]}"
            + "".join(f"\n    note: {note}" for note in notes))
