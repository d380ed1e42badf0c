"""The results folder of a benchmark, safe against kills at any instant.

``DIR/bench.json``: resolved config, its fingerprint, and one entry per invocation (argv, environment, device,
methods, prompts). ``DIR/results.jsonl``: one record per finished (prompt, method) job, appended, flushed and fsynced
as the job finishes; the file is only ever appended to. A kill can only cut the last line short; readers skip it and
any other unreadable line with a warning (the job runs again) and keep every record around it, and the next append
ends the cut line first. Each record carries the config fingerprint (``config_key``), so a
file from other settings is refused instead of mixed. This module needs no torch (``dpo-diff report`` reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dpo_diff.files import JsonlFile, append_jsonl, read_jsonl

RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"  # one line per failed job attempt; a rerun retries the job
MANIFEST = "bench.json"
SPACES = "spaces.json"
JOBS = "jobs"
JOB_INDEX = "index.json"  # in JOBS: job folder -> prompt and method


def prompt_id(prompt: str) -> str:
    """A stable short id of a prompt (folder names; independent of the prompt's position in the file)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:10]


def job_dir(prompt: str, method: str) -> str:
    """The job's folder, relative to the results folder."""
    return f"{JOBS}/{prompt_id(prompt)}/{method}"


def index_jobs(out: str | os.PathLike[str], jobs: Iterable[tuple[str, str]]) -> Path:
    """Add ``(prompt, method)`` jobs to ``DIR/jobs/index.json``, which maps each job folder (named by a hash of
    its prompt) to its prompt and method, keeping the entries already there.

    Read, merge and write happen under a lock and the file is replaced atomically, so concurrent writers never
    drop each other's entries and a reader never sees half a file."""
    from filelock import FileLock

    from dpo_diff.space import atomic_write_text

    path = Path(out) / JOBS / JOB_INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(".index.lock"))):  # not *.json*: only JSON files carry that name
        index = read_job_index(out)
        index.update({job_dir(p, m): {"prompt": p, "method": m} for p, m in jobs})
        atomic_write_text(path, json.dumps(dict(sorted(index.items())), indent=2, ensure_ascii=False) + "\n")
    return path


def read_job_index(out: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``DIR/jobs/index.json`` (empty when missing or damaged: it is rebuilt from the jobs as they run again)."""
    try:
        index = json.loads((Path(out) / JOBS / JOB_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


_NUMBER_LISTS = ("report_losses", "user_report_losses", "search_losses", "user_search_losses")
_REQUIRED = ("prompt", "method", *_NUMBER_LISTS, "cost", "seconds", "history", "best")


# Fields that measure wall-clock time: they differ between two runs of the same command (everything else must not).
WALL_CLOCK_FIELDS = ("seconds", "search_seconds", "timings")


def without_wall_clock(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as a rerun of the same command must reproduce it: wall-clock fields dropped, the best loss by
    elapsed seconds (``time_history``) kept as its losses only."""
    out = {k: v for k, v in record.items() if k not in WALL_CLOCK_FIELDS}
    if "time_history" in out:
        out["time_history"] = [loss for _, loss in out["time_history"]]
    return out


def _check_record(r: dict[str, Any]) -> dict[str, Any]:
    """A results-file record with what the runner and the report need (else ``KeyError``/``TypeError``)."""
    missing = [k for k in _REQUIRED if k not in r]
    if missing:
        raise KeyError(", ".join(missing))
    if not isinstance(r["prompt"], str) or not isinstance(r["method"], str):
        raise TypeError("prompt and method must be strings")
    for key in _NUMBER_LISTS:
        if not isinstance(r[key], list) or not r[key] or not all(isinstance(x, (int, float)) for x in r[key]):
            raise TypeError(f"{key} must be a non-empty list of numbers")
    return r


def read_results(out: str | os.PathLike[str], *, warn: bool = True) -> JsonlFile:
    """``DIR/results.jsonl``: records in file order and the unreadable lines skipped (blank, cut short by a kill,
    garbage), each named in one warning; records after a bad line are kept."""
    return read_jsonl(Path(out) / RESULTS, _check_record, what="benchmark record", warn=warn)


def load_records(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of ``DIR/results.jsonl`` in file order (see :func:`read_results`)."""
    return read_results(out).records


def append_record(out: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record durably (one ``write`` of one line, then fsync), never touching earlier lines."""
    append_jsonl(Path(out) / RESULTS, record, fsync=True)


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it is written atomically, so it was edited or damaged "
                         f"by hand: restore it or start over with another --out folder") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ValueError(f"{path} is not a benchmark manifest (no \"config\" object)")
    return manifest


def load_bench(out: str | os.PathLike[str]) -> tuple[dict[str, Any], JsonlFile]:
    """``(manifest, results)`` of a benchmark folder, for reports (raises when there is nothing to report)."""
    out = Path(out)
    if out.is_file():
        raise ValueError(f"{str(out)!r} is a file, not a benchmark folder; give the --out folder of 'dpo-diff "
                         f"bench'")
    if not out.is_dir():
        raise FileNotFoundError(f"benchmark folder {str(out)!r} does not exist")
    manifest = read_manifest(out)
    if manifest is None:
        raise FileNotFoundError(f"{str(out)!r} holds no benchmark ({MANIFEST} is missing); run 'dpo-diff bench' "
                                f"with --out {out}")
    results = read_results(out)
    if not results.records:
        skipped = f"; {len(results.skipped)} unreadable lines skipped" if results.skipped else ""
        raise ValueError(f"{str(out)!r} has no finished job yet ({RESULTS} is empty or missing{skipped})")
    return manifest, results


def write_files(root: str | os.PathLike[str], files: dict[str, bytes]) -> None:
    """Write ``{relative path: bytes}`` under ``root`` (what a remote job sends back), each file atomically."""
    root = Path(root)
    for rel, blob in files.items():
        dst = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"refusing to write outside the results folder: {rel!r}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part")
        tmp.write_bytes(blob)
        os.replace(tmp, dst)


def collect_files(folder: str | os.PathLike[str], prefix: str, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """``{prefix/relative path: bytes}`` of every file under ``folder`` (to ship a remote job's outputs back)."""
    folder = Path(folder)
    return {f"{prefix}/{f.relative_to(folder).as_posix()}": f.read_bytes()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name not in skip}


def append_failure(out: str | os.PathLike[str], prompt: str, method: str, error: str) -> dict[str, Any]:
    """Record that the job ``(prompt, method)`` failed with ``error`` (the bench goes on; a rerun retries it)."""
    import time

    failure = {"prompt": prompt, "method": method, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    append_jsonl(Path(out) / FAILURES, failure, fsync=True)
    return failure


def open_failures(out: str | os.PathLike[str], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last recorded failure of every job that has no result record (failures a rerun has since fixed are
    left out), in the order they failed."""
    done = {(r["prompt"], r["method"]) for r in records}
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for f in read_jsonl(Path(out) / FAILURES, _check_failure, what="job failure", warn=False).records:
        key = (f["prompt"], f["method"])
        last.pop(key, None)
        if key not in done:
            last[key] = f
    return list(last.values())


def _check_failure(f: dict[str, Any]) -> dict[str, Any]:
    if not all(isinstance(f.get(k), str) for k in ("prompt", "method", "error")):
        raise TypeError("prompt, method and error must be strings")
    return f
