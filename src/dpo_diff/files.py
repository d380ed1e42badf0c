"""Output files that survive kills and concurrent runs (no torch; ``dpo-diff report`` uses it).

* **Append-only JSONL record files** (bench ``results.jsonl``, optimize ``progress.jsonl``, select's score cache):
  every record is one line written with one ``write``. :func:`read_jsonl` skips any unreadable line (blank, cut
  short by a kill, garbage, not a record) with one :class:`FileWarning` naming the line numbers, and keeps every
  record before *and after* it. :func:`append_jsonl` first ends a cut-off last line, so a new record never glues onto
  it. Nothing here truncates or rewrites a finished record.
* **One writer per output**: :func:`output_lock` takes an exclusive lock (the ``filelock`` library, released by the
  operating system when the holder dies, even on ``kill -9``) on an output folder or file; a second writer is
  refused with :class:`OutputLockedError`, which names the holder's pid and command.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCK_NAME = ".dpo-diff.lock"
_SHOWN_REASONS = 10  # skipped lines listed in one warning


class FileWarning(UserWarning):
    """Something in an input or output file was skipped; the CLI prints it as one ``warning:`` line."""


class OutputLockedError(ValueError):
    """Another process is writing the same output."""


@dataclass(frozen=True)
class SkippedLine:
    line: int  # 1-based
    reason: str


@dataclass
class JsonlFile:
    """What :func:`read_jsonl` found: the records in file order and the lines it skipped."""

    path: Path
    records: list[Any] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)

    def describe_skipped(self) -> str:
        """``"line 3 (blank), line 7 (not valid JSON)"`` (the first few)."""
        shown = ", ".join(f"line {s.line} ({s.reason})" for s in self.skipped[:_SHOWN_REASONS])
        more = len(self.skipped) - _SHOWN_REASONS
        return shown + (f" and {more} more" if more > 0 else "")


def read_jsonl(path: str | os.PathLike[str], parse: Callable[[dict[str, Any]], Any] | None = None, *,
               what: str = "record", warn: bool = True) -> JsonlFile:
    """Read a JSONL file of JSON objects, skipping unreadable lines instead of stopping at them.

    Args:
        path: the file (missing: no records, nothing skipped).
        parse: turns a JSON object into the record kept (default: the object itself); ``KeyError``, ``TypeError``
            or ``ValueError`` from it mark the line as not a ``what`` and skip it.
        what: what one line holds, for the reasons (``"benchmark record"``, ``"evaluation"``).
        warn: issue one :class:`FileWarning` listing the skipped lines.
    """
    path = Path(path)
    result = JsonlFile(path)
    if not path.is_file():
        return result
    data = path.read_bytes()
    lines = data.split(b"\n")
    cut = lines[-1] != b""  # no final newline: the last line may be a write cut short by a kill
    if not cut:
        lines.pop()
    for n, raw in enumerate(lines, start=1):
        reason = None
        text = raw.strip()
        if not text:
            reason = "blank"
        else:
            try:
                obj = json.loads(text.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                reason = "cut short: no newline at the end of the file" if cut and n == len(lines) else \
                    "not valid JSON"
            else:
                if not isinstance(obj, dict):
                    reason = f"not a {what}: a JSON {type(obj).__name__}"
                else:
                    try:
                        result.records.append(obj if parse is None else parse(obj))
                    except (KeyError, TypeError, ValueError) as e:
                        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
                        reason = f"not a {what}: {detail}"
        if reason is not None:
            result.skipped.append(SkippedLine(n, reason))
    if warn and result.skipped:
        warnings.warn(f"{path}: skipped {len(result.skipped)} unreadable line(s) and kept the other "
                      f"{len(result.records)} {what}(s): {result.describe_skipped()}",
                      FileWarning, stacklevel=2)
    return result


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any], *, fsync: bool = False) -> None:
    """Append ``record`` as one line with one ``write``; a cut-off last line is ended first (and stays skipped)."""
    line = (strict_dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:
            line = line[os.write(fd, line):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _lock_paths(target: Path, is_file: bool) -> tuple[Path, Path]:
    """``(lock file, owner file)`` of an output folder (inside it) or an output file (beside it, hidden)."""
    lock = target.with_name(f".{target.name}.lock") if is_file else target / LOCK_NAME
    return lock, lock.with_name(lock.name + ".owner")


def _holder(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        return f"process {info['pid']} ({info['command']}, started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its pid is not recorded yet)"


@contextmanager
def output_lock(target: str | os.PathLike[str], *, is_file: bool = False, command: str | None = None
                ) -> Iterator[None]:
    """Hold the one-writer lock of ``target``: an output folder (created if needed; the lock file lives inside it)
    or, with ``is_file``, an output file (the lock file is ``.NAME.lock`` beside it).

    Raises:
        OutputLockedError: another process holds it; the message names its pid and command.
    """
    from filelock import FileLock, Timeout

    target = Path(target)
    if not is_file:
        check_output_folder(target)
    created = not is_file and not target.exists()
    lock_path, owner = _lock_paths(target, is_file)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputLockedError(
            f"{target} is being written by {_holder(owner)}; wait for it to finish or stop it, or choose another "
            f"output") from None
    try:
        info = {"pid": os.getpid(), "command": command or " ".join(["dpo-diff", *sys.argv[1:]])[:300],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        owner.write_text(json.dumps(info) + "\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
        if created and {p.name for p in target.iterdir()} <= {lock_path.name}:
            try:  # a first run that failed before writing anything leaves no trace
                lock_path.unlink(missing_ok=True)
                target.rmdir()
            except OSError:  # another run started writing meanwhile
                pass


def _check_creatable(start: Path, named: str, verb: str) -> None:
    """Refuse when the nearest existing folder at or above ``start`` is a file or not writable (``named``: how the
    output is called in the message; ``verb``: created or written)."""
    parent = start
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{named} cannot be {verb}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{named} cannot be {verb}: no permission to create files in {str(parent)!r}")


def check_output_file(path: str | os.PathLike[str], flag: str = "--out", example: str = "out.json") -> None:
    """Refuse an output file that cannot be written, before any work is done: a directory, or a path whose nearest
    existing folder is a file or not writable (the message names the flag and what to give instead)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {str(p)!r} is a directory; give a JSON file, e.g. {str(p / example)!r}")
    _check_creatable(p.parent, f"{flag} {str(p)!r}", "written")


def check_output_folder(path: str | os.PathLike[str]) -> None:
    """Refuse an output folder that is a file or cannot be created (a file above it, no permission), naming it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"output folder {str(p)!r} is a file; give a folder for --out (it is created if missing)")
    _check_creatable(p, f"output folder {str(p)!r}", "created")


def read_utf8(path: str | os.PathLike[str], what: str) -> str:
    """The text of ``path``; a file that is not UTF-8 is an error naming ``what`` and the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                         f"UTF-8") from None


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by ``None``: strict JSON has no NaN or Infinity,
    and a file a strict parser refuses is no JSON file (e.g. a search's history before its first evaluation)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def strict_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes strict JSON only (see :func:`finite_json`)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)
