"""The app's run folder: every path the browser names is resolved inside it, never outside.

Runs are folders with a ``config.json`` written by ``optimize``; benchmarks are folders with a ``bench.json``
written by ``bench``. Both may sit anywhere below the root.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOWNLOADS = ".downloads"  # zips of run folders, inside the root so nothing is written elsewhere
MAX_GRIDS = 48  # image grids shown per benchmark (one per prompt and method)


class OutsideRootError(ValueError):
    """A path that resolves outside the app's run folder."""


def _within(base: Path, target: Path) -> bool:
    """Whether the resolved ``target`` is ``base`` or below it."""
    return target == base or base in target.parents


def safe_path(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, or :class:`OutsideRootError` when it leaves ``root`` (``..``, absolute paths,
    links pointing out)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if not _within(base, target):
        raise OutsideRootError(f"{relative!r} is outside the app's run folder")
    return target


def _inside(base: Path, path: Path) -> bool:
    return _within(base, path.resolve())  # False e.g. for a link inside the root that points out of it


def inside_file(root: Path, path: Path) -> Path | None:
    """``path`` resolved when it is a regular file inside ``root``, else ``None``: a link out of the run folder is
    treated as absent, so the app never shows or serves its target."""
    base, target = Path(root).resolve(), Path(path).resolve()
    if not _within(base, target) or not target.is_file():
        return None
    return target


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


def read_json(root: Path, path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is absent, half-written or a link out of ``root``."""
    found = inside_file(root, path)
    try:
        return None if found is None else json.loads(found.read_text())
    except (OSError, ValueError):
        return None  # absent or half-written: the caller shows what it has


def _zip_members(root: Path, folder: Path) -> Iterator[tuple[Path, str]]:
    """``(file, name in the zip)`` for every regular file below ``folder`` whose target lies inside ``root``.

    Linked folders are never entered (``os.walk`` does not follow them): their content is either outside the
    run folder or already reachable by its own path. A link to a file inside ``root`` is kept as that file."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != DOWNLOADS)
        for name in sorted(filenames):
            target = inside_file(root, Path(dirpath) / name)
            if target is not None:
                yield target, (Path(dirpath) / name).relative_to(folder).as_posix()


def zip_folder(root: Path, relative: str) -> Path:
    """A zip of the run folder ``relative`` (the files ``optimize`` wrote), under ``root/.downloads``; files that
    link outside ``root`` are left out."""
    base = Path(root).resolve()
    folder = safe_path(base, relative)
    if not folder.is_dir():
        raise FileNotFoundError(f"no run folder {relative!r}")
    downloads = safe_path(base, DOWNLOADS)
    downloads.mkdir(parents=True, exist_ok=True)
    dest = downloads / f"{relative.replace('/', '__') or 'root'}.zip"
    # Written beside and renamed over: a link planted at the zip's name is replaced, never written through.
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, name in _zip_members(base, folder):
                archive.write(path, name)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


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
    if "selection" in result:
        from dpo_diff.optimize import selection_line

        lines.append("\n" + selection_line(result["selection"]))
    if result.get("cancelled"):
        lines.append("\n**cancelled**: the search stopped early; this is the best it had found")
    for note in [result.get("note"), *result.get("search_notes", [])]:
        if note:
            lines.append(f"\nnote: {note}")
    return "\n".join(lines)


def run_view(root: Path, relative: str) -> dict[str, Any]:
    """What the app shows of a run folder: its comparison grid, its numbers and its state."""
    folder = safe_path(root, relative)
    result = read_json(root, folder / "result.json")
    if result is not None:
        text = result_markdown(result)
    else:
        best = read_json(root, folder / "best.json")
        text = "unfinished run (no result.json)" + (f"; best so far: `{best['prompt']}`" if best else "")
    return {"markdown": text, "image": inside_file(root, folder / "comparison.png")}


def links_out(root: Path, folder: Path) -> list[str]:
    """Links below ``folder`` (to files or folders, dangling too) whose target lies outside ``root``."""
    base = Path(root).resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not _within(base, path.resolve()):
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def _images_out(root: Path, folder: Path) -> list[str]:
    """Image paths named by the benchmark's records that lead outside ``root`` (the HTML report inlines them)."""
    from dpo_diff.bench.results import read_results

    base = Path(root).resolve()
    named = {rel for r in read_results(folder, warn=False).records
             for images in (r.get("images") or {}).values() if isinstance(images, list)
             for rel in images if isinstance(rel, str)}
    return sorted(rel for rel in named if not _within(base, (folder / rel).resolve()))


def bench_view(root: Path, relative: str) -> dict[str, Any]:
    """A benchmark folder's tables (writing report.md/curves.png/report.html when missing or older than the
    results) and its image grids. A benchmark that reaches outside ``root`` is refused before anything is read:
    the report would copy what it reaches into files the app serves."""
    from dpo_diff.bench.report import write_report

    folder = safe_path(root, relative)
    outside = links_out(root, folder) + _images_out(root, folder)
    if outside:
        raise OutsideRootError(f"benchmark {relative!r} reaches outside the app's run folder through "
                               f"{', '.join(outside[:3])}; the app does not show it (remove those links, or read "
                               f"it with 'dpo-diff report')")
    results = folder / "results.jsonl"
    report = folder / "report.md"
    if not report.is_file() or (results.is_file() and results.stat().st_mtime > report.stat().st_mtime):
        write_report(folder)
    grids = sorted(_files_named(folder, "comparison.png"))[:MAX_GRIDS]
    return {"markdown": report.read_text(), "curves": inside_file(root, folder / "curves.png"),
            "images": [(p, p.parent.relative_to(folder).as_posix()) for p in grids]}
