"""What each control of the web app does, in plain Python (no UI library): build and edit the space, start, poll,
cancel, browse. :mod:`dpo_diff.ui.app` only maps these to widgets, so this is tested without a browser.

Every error a user can cause comes back as the CLI's one-line message (:class:`UserMessage`), never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_diff.space import SearchSpace
from dpo_diff.ui import folders
from dpo_diff.ui.jobs import (
    JobManager,
    Models,
    RunRequest,
    Snapshot,
    build_space,
    error_line,
    make_config,
    reserve_folder,
    run_folder_name,
)


class UserMessage(ValueError):
    """An error to show in the page as one line."""


@dataclass
class RunView:
    """The run panel at one moment."""

    status: str
    best: str = ""
    live_image: Any = None  # the best-so-far images on the search seeds side by side (PIL)
    result: str = ""
    comparison: Path | None = None
    download: Path | None = None
    done: bool = False


class Controller:
    def __init__(self, root: Path, models: Models, manager: JobManager | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.models = models
        self.jobs = manager or JobManager(self.root)
        self._downloads: dict[int, Path] = {}

    # ------------------------------------------------------------------ a new run
    def build(self, prompt: str, task: str) -> tuple[str, str, dict[str, Any]]:
        """The space text to edit, a one-line description, and the built space with its task (kept by the page)."""
        from dpo_diff.ui.space_text import space_to_text

        try:
            space = build_space(prompt, task, self.models)
        except Exception as e:  # noqa: BLE001 - every failure is a message in the page
            raise UserMessage(error_line(e)) from None
        info = (f"{len(space.slots)} slots, {space.num_candidates} candidates ({self.models.name}). Edit the "
                f"substitutes after each ':' (remove one, add one) or delete a line to drop its slot.")
        return space_to_text(space), info, {"task": task, "space": space.to_dict()}

    def start(self, request: RunRequest, built: dict[str, Any] | None) -> int:
        """Validate as the CLI does and queue the run; returns the job id. The edited space text applies when the
        page built the space for this prompt and task; otherwise the space is built afresh, unedited."""
        try:
            space = _built_for(built, request)
            if space is None:
                space = SearchSpace.from_dict(self.build(request.prompt, request.task)[2]["space"])
                request.space_text = None
            out = self.root / run_folder_name(space.prompt)
            cfg, space = make_config(request, self.models, out, space)
            cfg.out = str(reserve_folder(out))  # only once the request is valid: a refused run leaves no folder
        except UserMessage:
            raise
        except Exception as e:  # noqa: BLE001
            raise UserMessage(error_line(e)) from None
        return self.jobs.submit(cfg, space, self.models).id

    def cancel(self, job_id: int | None) -> None:
        if job_id is not None:
            try:
                self.jobs.cancel(job_id)
            except KeyError as e:
                raise UserMessage(str(e.args[0])) from None

    def poll(self, job_id: int) -> RunView:
        from dpo_diff.images import to_pil

        try:
            snap = self.jobs.snapshot(job_id)
        except KeyError as e:  # e.g. a page left open across a restart of the app
            raise UserMessage(str(e.args[0])) from None
        view = RunView(status=status_line(snap), done=snap.done)
        if snap.best_prompt:
            neg = f" · negative: `{snap.best_negative_prompt}`" if snap.best_negative_prompt else ""
            view.best = f"best so far: `{snap.best_prompt}`{neg}"
        if snap.best_images:
            view.live_image = side_by_side([to_pil(img) for img in snap.best_images])
            if snap.best_images_pair != (snap.best_prompt, snap.best_negative_prompt):
                prompt, negative = snap.best_images_pair or ("", "")
                view.best += f"  \n(images: the previous best, `{prompt}`" + (f" · `{negative}`)" if negative else ")")
        if snap.result is not None:
            view.result = folders.result_markdown(snap.result)
            view.comparison = folders.inside_file(self.root, snap.out / "comparison.png")
            view.download = self.download(snap.job_id)
        return view

    def download(self, job_id: int) -> Path:
        if job_id not in self._downloads:
            rel = self.jobs.get(job_id).out.resolve().relative_to(self.root).as_posix()
            self._downloads[job_id] = folders.zip_folder(self.root, rel)
        return self._downloads[job_id]

    # ------------------------------------------------------------------ past runs and benchmarks
    def runs(self) -> list[str]:
        return folders.list_runs(self.root)

    def benches(self) -> list[str]:
        return folders.list_benches(self.root)

    def run(self, relative: str) -> dict[str, Any]:
        try:
            view = folders.run_view(self.root, relative)
            view["download"] = folders.zip_folder(self.root, relative)
            return view
        except Exception as e:  # noqa: BLE001
            raise UserMessage(error_line(e)) from None

    def bench(self, relative: str) -> dict[str, Any]:
        try:
            return folders.bench_view(self.root, relative)
        except Exception as e:  # noqa: BLE001
            raise UserMessage(error_line(e)) from None


def side_by_side(images: list, cell: int = 128) -> Any:
    """Images in a row, each scaled to ``cell`` pixels high (small ones with sharp pixels)."""
    from PIL import Image

    tiles = [img.resize((cell * img.width // img.height, cell),
                        Image.NEAREST if img.height < cell else Image.LANCZOS) for img in images]
    row = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), cell), "white")
    x = 0
    for t in tiles:
        row.paste(t, (x, 0))
        x += t.width + 4
    return row


def _built_for(built: dict[str, Any] | None, request: RunRequest) -> SearchSpace | None:
    if not built or built.get("task") != request.task:
        return None
    space = SearchSpace.from_dict(built["space"])
    return space if space.prompt.strip().lower() == request.prompt.strip().lower() else None


def status_line(snap: Snapshot) -> str:
    """One line: the state, cost spent of the budget and the best loss so far."""
    if snap.state == "queued":
        ahead = f" ({snap.queue_position} run(s) ahead)" if snap.queue_position else ""
        return f"**queued**{ahead}"
    if snap.state == "failed":
        return f"**failed**: {snap.error}"
    parts = [f"**{snap.state}**", f"cost {snap.cost:g} of budget {snap.budget:g}"]
    if snap.best_loss is not None:
        parts.append(f"best loss {snap.best_loss:.4f}")
    parts.append(f"{snap.evaluations} evaluations")
    if snap.previews:
        parts.append(f"{snap.previews} previews")
    if snap.state == "running" and snap.result is None and snap.evaluations == 0:
        parts.append("preparing the first evaluation (models, the user prompt's loss, GPO)")
    if snap.state == "cancelled":
        parts.append("stopped early: the best so far is kept")
    return " · ".join(parts)
