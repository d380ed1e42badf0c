"""The app's run folder: every path the browser names is resolved inside it, never outside.

Runs are folders with a ``config.json`` written by ``optimize``; benchmarks are folders with a ``bench.json``
written by ``bench``. Both may sit anywhere below the root.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

DOWNLOADS = ".downloads"  # zips of run folders, inside the root so nothing is written elsewhere
MAX_GRIDS = 48  # image grids shown per benchmark (one per prompt and method)


class OutsideRootError(ValueError):
    """A path that resolves outside the app's run folder."""


def safe_path(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, or :class:`OutsideRootError` when it leaves ``root`` (``..``, absolute paths,
    links pointing out)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise OutsideRootError(f"{relative!r} is outside the app's run folder")
    return target


def _inside(base: Path, path: Path) -> bool:
    try:
        safe_path(base, path.relative_to(base).as_posix())
        return True
    except (OutsideRootError, ValueError):
        return False  # e.g. a link inside the root that points out of it


def _files_named(root: Path, name: str) -> list[Path]:
    """Files called ``name`` below ``root`` (never through a link out of it), newest first: the run a user just
    made is the one they look for."""
    base = Path(root).resolve()
    if not base.is_dir():
        return []
    found = [p for p in base.rglob(name) if DOWNLOADS not in p.parts and _inside(base, p)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _folders_with(root: Path, marker: str) -> list[str]:
    base = Path(root).resolve()
    return [p.parent.relative_to(base).as_posix() for p in _files_named(base, marker)]


def list_runs(root: Path) -> list[str]:
    return _folders_with(root, "config.json")


def list_benches(root: Path) -> list[str]:
    return _folders_with(root, "bench.json")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or half-written: the caller shows what it has


def zip_folder(root: Path, relative: str) -> Path:
    """A zip of the run folder ``relative`` (the files ``optimize`` wrote), under ``root/.downloads``."""
    folder = safe_path(root, relative)
    if not folder.is_dir():
        raise FileNotFoundError(f"no run folder {relative!r}")
    dest = safe_path(root, f"{DOWNLOADS}/{relative.replace('/', '__') or 'root'}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.make_archive(str(dest), "zip", root_dir=folder))


def result_markdown(result: dict[str, Any]) -> str:
    """The losses (and, in the shapes world, ground-truth faithfulness) of a finished run, user vs best."""
    best = result["best"]
    neg = f"  \nnegative prompt: `{best['negative_prompt']}`" if best.get("negative_prompt") else ""
    lines = [f"**user**: `{result['user_prompt']}`  \n**best**: `{best['prompt']}`{neg}", "",
             "| | user | best |", "|---|---|---|"]
    for key, name in (("search_mean", "loss, search seeds"), ("report_mean", "loss, held-out seeds")):
        before, after = result["before"].get(key), result["after"].get(key)
        if before is not None and after is not None:
            lines.append(f"| {name} | {before:.4f} | {after:.4f} |")
    metrics = result.get("metrics") or {}
    if "user" in metrics and "best" in metrics:
        for part, name in (("search", "faithful (ground truth), search seeds"),
                           ("report", "faithful (ground truth), held-out seeds")):
            u, b = metrics["user"][part]["all_correct"], metrics["best"][part]["all_correct"]
            lines.append(f"| {name} | {u:.0%} | {b:.0%} |")
    goal = "lower" if result["task"] == "improve" else "higher"
    lines += ["", f"task **{result['task']}** ({goal} loss is better), method **{result['method']}**, cost "
              f"{result['cost']:g} of budget {result['budget']:g}, {result['evaluated']} candidates evaluated"]
    if result.get("cancelled"):
        lines.append("\n**cancelled**: the search stopped early; this is the best it had found")
    for note in [result.get("note"), *result.get("search_notes", [])]:
        if note:
            lines.append(f"\nnote: {note}")
    return "\n".join(lines)


def run_view(root: Path, relative: str) -> dict[str, Any]:
    """What the app shows of a run folder: its comparison grid, its numbers and its state."""
    folder = safe_path(root, relative)
    result = read_json(folder / "result.json")
    grid = folder / "comparison.png"
    if result is not None:
        text = result_markdown(result)
    else:
        best = read_json(folder / "best.json")
        text = "unfinished run (no result.json)" + (f"; best so far: `{best['prompt']}`" if best else "")
    return {"markdown": text, "image": grid if grid.is_file() else None}


def bench_view(root: Path, relative: str) -> dict[str, Any]:
    """A benchmark folder's tables (writing report.md/curves.png/report.html when missing or older than the
    results) and its image grids."""
    from dpo_diff.bench.report import write_report

    folder = safe_path(root, relative)
    results = folder / "results.jsonl"
    report = folder / "report.md"
    if not report.is_file() or (results.is_file() and results.stat().st_mtime > report.stat().st_mtime):
        write_report(folder)
    curves = folder / "curves.png"
    grids = sorted(_files_named(folder, "comparison.png"))[:MAX_GRIDS]
    return {"markdown": report.read_text(), "curves": curves if curves.is_file() else None,
            "images": [(p, p.parent.relative_to(folder).as_posix()) for p in grids]}
