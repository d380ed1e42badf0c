"""Run benchmark jobs as Ray tasks: one task per (prompt, method), one GPU each (or CPUs), retried on failure.

Workers may sit on other machines, so a task writes into a temporary folder and returns its record together with its
files (images, result.json, ...); the driver writes both into the results folder as each task finishes. Results thus
stream into the same ``results.jsonl`` as a local run, in completion order. A task that still fails after its
retries is recorded as a failed job and the others go on, as in a local run (a rerun retries it); with
``--fail-fast`` it stops the benchmark: the queued tasks are cancelled and the finished records stay.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpo_diff.bench.config import BenchConfig, BenchError
from dpo_diff.bench.jobs import Job
from dpo_diff.bench.results import collect_files, write_files
from dpo_diff.files import LOCK_NAME

_PROBE_TIMEOUT_S = 5.0
# Resume state and the one-writer lock of a run folder: useless once the job is done.
_SKIP_FILES = ("gpo_state.pt", "progress.jsonl", LOCK_NAME)


def _remote_job(cfg_dict: dict[str, Any], job_dict: dict[str, Any], job_fn: Callable) -> tuple[dict, dict]:
    """The body of a Ray task (module-level so Ray pickles it by reference)."""
    cfg, job = BenchConfig.from_dict(cfg_dict), Job.from_dict(job_dict)
    with tempfile.TemporaryDirectory(prefix="dpo-diff-job-") as tmp:
        record = job_fn(cfg, job, tmp)
        return record, collect_files(tmp, job.folder, skip=_SKIP_FILES)


def probe(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when ``host:port`` does not accept connections."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise BenchError(f"cannot reach the Ray cluster at {address!r} ({e}); start one with 'ray start --head' "
                         f"and pass its address, or use --ray without an address for a local instance, or drop "
                         f"--ray to run here") from e


class RayExecutor:
    """Connects to (or starts) Ray, runs jobs as tasks, disconnects (options: :class:`.runner.RayOptions`)."""

    def __init__(self, options: Any, log: Callable[[str], None] = print) -> None:
        self.options = options
        self.log = log
        self._started = False

    def start(self) -> None:
        try:
            import ray
        except ImportError as e:
            raise BenchError("--ray needs Ray: pip install 'dpo-diff[ray]'") from e
        opts = self.options
        if opts.address:
            probe(opts.address)
        try:
            if opts.address:
                ray.init(address=opts.address, include_dashboard=False, logging_level="warning")
            else:
                # "local" forces a fresh instance even when RAY_ADDRESS points elsewhere.
                ray.init(address="local", num_cpus=opts.workers, include_dashboard=False, logging_level="warning")
        except Exception as e:  # ConnectionError, RuntimeError, ...: all mean "no cluster to run on"
            ray.shutdown()
            where = f"at {opts.address!r}" if opts.address else "locally"
            hint = ("; recent Ray clusters require token authentication: make the cluster's token available to this "
                    "process (RAY_AUTH_TOKEN or ~/.ray/auth_token; see Ray's token-auth docs)") if opts.address else ""
            raise BenchError(f"could not start or connect to Ray {where}: {type(e).__name__}: {e}{hint}") from e
        self._started = True
        res = ray.cluster_resources()
        self.log(f"ray: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")

    def stop(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def run(self, cfg: BenchConfig, jobs: list[Job], out: Path, on_record: Callable[[dict], None],
            job_fn: Callable, on_failure: Callable[[Job, str], None] | None = None) -> None:
        """Run ``jobs`` as Ray tasks; a job that fails after its retries goes to ``on_failure(job, error)`` (which
        may raise to stop the bench) or, without it, stops the bench."""
        import ray

        if not jobs:
            return
        opts = self.options
        gpus = opts.gpus_per_job
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.device in ("auto", "cuda") else 0
        task = ray.remote(_remote_job).options(num_cpus=opts.cpus_per_job, num_gpus=gpus,
                                               max_retries=opts.retries, retry_exceptions=True)
        cfg_ref = ray.put(cfg.to_dict())
        pending = {task.remote(cfg_ref, job.to_dict(), job_fn): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    record, files = ray.get(ref)
                except Exception as e:
                    if on_failure is not None:
                        try:
                            on_failure(job, f"failed after {opts.retries} retries: {_first_line(e)}")
                            continue
                        except BenchError:
                            pass
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise BenchError(f"job ({job.prompt!r}, {job.method}) failed after {opts.retries} retries: "
                                     f"{_first_line(e)}; finished jobs are saved, rerun the same command to "
                                     f"resume") from e
                write_files(out, files)
                on_record(record)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
