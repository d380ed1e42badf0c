"""The results folder of a benchmark, safe against kills at any instant.

``DIR/bench.json``: resolved config, its fingerprint, and one entry per invocation (argv, environment, device,
methods, prompts). ``DIR/results.jsonl``: one record per finished (prompt, method) job, appended, flushed and fsynced
as the job finishes. A kill can only cut the last line short; :func:`load_records` drops such a tail (the job runs
again) so the next append starts on a fresh line. Each record carries the config fingerprint (``config_key``), so a
file from other settings is refused instead of mixed. This module needs no torch (``dpo-diff report`` reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"
MANIFEST = "bench.json"
SPACES = "spaces.json"
JOBS = "jobs"


def prompt_id(prompt: str) -> str:
    """A stable short id of a prompt (folder names; independent of the prompt's position in the file)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:10]


def job_dir(prompt: str, method: str) -> str:
    """The job's folder, relative to the results folder."""
    return f"{JOBS}/{prompt_id(prompt)}/{method}"


def load_records(out: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """Records of ``DIR/results.jsonl`` in file order. A line cut short by a kill is skipped; with ``repair`` it is
    also removed from the file, so the next append does not glue onto it."""
    path = Path(out) / RESULTS
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, good_end = [], 0
    pos = 0
    for line in data.splitlines(keepends=True):
        pos += len(line)
        if not line.endswith(b"\n"):
            break  # the tail of an interrupted write
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_end = pos
    if repair and good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return records


def append_record(out: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record durably (one ``write`` of one line, then fsync)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(Path(out) / RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_bench(out: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(manifest, records)`` of a benchmark folder, for reports (raises when there is nothing to report)."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"benchmark folder {str(out)!r} does not exist")
    manifest = read_manifest(out)
    if manifest is None:
        raise FileNotFoundError(f"{str(out)!r} holds no benchmark ({MANIFEST} is missing); run 'dpo-diff bench' "
                                f"with --out {out}")
    records = load_records(out)
    if not records:
        raise ValueError(f"{str(out)!r} has no finished job yet ({RESULTS} is empty or missing)")
    return manifest, records


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
