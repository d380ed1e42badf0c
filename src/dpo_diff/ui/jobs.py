"""Runs of the web app, independent of the UI library: requests, a queue with one worker thread per device,
cancellation, and progress snapshots read from the files ``optimize`` writes (``best.json``, ``progress.jsonl``).

A worker thread (not a process) keeps the loaded models between runs and lets the page poll progress while torch
computes (torch releases the GIL). A run is :func:`dpo_diff.optimize.optimize` with a cancellation check; a run that
raises is reported as failed with a one-line message, and the worker goes on with the next one.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_diff.optimize import OptimizeConfig
from dpo_diff.search import AUTO
from dpo_diff.search.selection import SelectionConfig
from dpo_diff.space import SearchSpace, SpaceError

WORLD = "shapes-world"  # the model name of the bundled shapes world (the app's default, offline)
DONE = ("finished", "cancelled", "failed")


@dataclass(frozen=True)
class Models:
    """What the app generates and judges with, set on the command line (never by the browser: a model path typed
    in a page would let the page read any folder). ``model=None`` is the bundled shapes world."""

    model: str | None = None
    judge: str | None = None
    device: str = "cpu"

    @property
    def world(self) -> bool:
        return self.model is None

    @property
    def name(self) -> str:
        return WORLD if self.world else str(self.model)


@dataclass
class RunRequest:
    """A run as the page asks for it (strings where the user types them, parsed by the CLI's own parsers)."""

    prompt: str
    task: str = "improve"
    method: str = AUTO  # "auto": the task's default method (dpo_diff.search.TASK_DEFAULTS), resolved by OptimizeConfig
    budget: float = 40.0
    seeds: str = "0"
    report_seeds: str = "100-103"
    seed: int = 0
    steps: int | None = None  # None: the model's recommended number (50)
    space_text: str | None = None  # the edited space (see dpo_diff.ui.space_text); None: as built
    proposal: str = AUTO  # how the samplers draw candidates: uniform (the paper's), sparse edits, auto (the task's)
    select_judges: str = ""  # --select-judge: judges that must all prefer the answer to the user prompt


def build_space(prompt: str, task: str, models: Models) -> SearchSpace:
    """The task's space for ``prompt`` (:func:`~dpo_diff.space_builder.task_space_kind`), built from the world's own
    antonyms/synonyms in the shapes world, WordNet (as ``dpo-diff space build``) otherwise. Raises ``ValueError``
    with the CLI's message when there is nothing to search."""
    from dpo_diff.problem import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if not prompt.strip():
        raise SpaceError("--prompt is empty; give the text you want to generate")
    from dpo_diff.space_builder import build_task_spaces, task_space_kind

    # As 'dpo-diff optimize' without --space builds it (the world's own substitutes, else WordNet with the meaning
    # pre-filter for synonyms).
    prompt = prompt.strip()
    space = build_task_spaces([prompt], task, world=models.world, on_error="raise").spaces[prompt]
    if space.is_trivial:
        if not models.world:
            raise SpaceError(space.meta.get("warning") or f"nothing to search in {prompt!r}")
        from dpo_diff.space import prompt_words

        words = [w.text for w in prompt_words(prompt)]
        raise SpaceError(f"no substitutable words in {prompt!r} for the {task_space_kind(task)} space (prompt "
                         f"words: {words}; words the shapes world does not know get no slot); the space is empty "
                         f"and cannot be optimized")
    return space


def make_config(request: RunRequest, models: Models, out: Path, built: SearchSpace) -> tuple[OptimizeConfig,
                                                                                            SearchSpace]:
    """The run's :class:`OptimizeConfig` and space, validated as the CLI validates them (``ValueError`` with the
    CLI's message on bad input)."""
    from dpo_diff.seeding import parse_seeds
    from dpo_diff.ui.space_text import text_to_space

    space = built if request.space_text is None else text_to_space(request.space_text, built)
    if space.is_trivial:
        raise SpaceError("the edited space offers no alternative to the user prompt; keep at least one substitute")
    extra: dict[str, Any] = {}
    if models.world:
        from dpo_diff.world import RECOMMENDED_GUIDANCE, generator_path, judge_path

        # The world's synonyms mean the same scene by construction, so no meaning constraint (as `dpo-diff demo`).
        extra = {"model": str(generator_path()), "judge": str(judge_path()), "guidance": RECOMMENDED_GUIDANCE,
                 "similarity_threshold": None}
    else:
        extra = {"model": models.model, **({"judge": models.judge} if models.judge else {})}
    cfg = OptimizeConfig(prompt=space.prompt, task=request.task, method=request.method, budget=float(request.budget),
                         seeds=parse_seeds(request.seeds), report_seeds=parse_seeds(request.report_seeds),
                         seed=int(request.seed), steps=50 if request.steps is None else int(request.steps),
                         device=models.device, proposal=request.proposal,
                         selection=page_selection(request.select_judges, models), out=str(out), **extra)
    return cfg, space


def page_selection(text: str, models: Models) -> SelectionConfig:
    """The run's selection (the default re-ranking) with the page's selection judges, parsed as ``--select-judge``
    is (comma-separated specs).

    A page may name only judges the app already trusts: the shapes world's bundled ones (``world:NAME``) and the
    judge given on the app's command line. Any other source is a model path or hub id, which the browser must not
    choose (see :class:`Models`)."""
    from dpo_diff.judges.spec import WORLD_JUDGES, parse_judge
    from dpo_diff.search import DEFAULT_RERANK_TOP

    selection = SelectionConfig(DEFAULT_RERANK_TOP, judges=text or ())
    trusted = {models.judge} if models.judge else set()
    for spec in map(parse_judge, selection.judges):
        named = [spec.source, *(v for k, v in spec.options if k == "clip")]
        if any(src and not (src.startswith("world:") or src in trusted) for src in named):
            allowed = ", ".join([*(f"world:{name}" for name in WORLD_JUDGES), *sorted(trusted)])
            raise ValueError(f"selection judge {str(spec)!r}: the web app takes only judges it already has (sources "
                             f"{allowed}); start 'dpo-diff ui --judge ...' for another, or use dpo-diff optimize "
                             f"--select-judge")
    return selection


def run_folder_name(prompt: str) -> str:
    """A sortable, readable folder name for a run of ``prompt`` (to the second: :func:`reserve_folder` makes it
    unique)."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"


def reserve_folder(path: Path) -> Path:
    """Create ``path``, or ``path_2``, ``path_3``... when it exists: two runs started in the same second, by one app
    or by two sharing a run folder, each get their own (``mkdir`` is atomic; ``_`` never occurs in a slug)."""
    for n in itertools.count(1):
        folder = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise AssertionError("unreachable")  # itertools.count never ends


class RecordingBackend:
    """The generator with its latest images kept by ``(prompt, negative prompt, seed)``, so the page can show the
    best-so-far prompt's images while the search runs without generating them again. Everything else is the
    wrapped backend's."""

    def __init__(self, inner: Any, keep: int = 256) -> None:
        self._inner, self._keep = inner, keep
        self._images: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate(self, prompts, negative_prompts, seeds, **kwargs):
        images = self._inner.generate(prompts, negative_prompts, seeds, **kwargs)
        with self._lock:
            for key, img in zip(zip(prompts, negative_prompts, seeds), images.detach().float().cpu()):
                self._images[key] = img
                self._images.move_to_end(key)
            while len(self._images) > self._keep:
                self._images.popitem(last=False)
        return images

    def images_of(self, prompt: str, negative_prompt: str, seeds: tuple[int, ...]) -> list | None:
        """The images of a prompt pair on ``seeds``, or ``None`` when some were not kept."""
        with self._lock:
            found = [self._images.get((prompt, negative_prompt, s)) for s in seeds]
        return None if any(img is None for img in found) else found


@dataclass
class Job:
    id: int
    cfg: OptimizeConfig
    space: SearchSpace
    models: Models
    state: str = "queued"
    error: str = ""
    result: dict[str, Any] | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    backend: RecordingBackend | None = None  # set while running
    live_images: tuple[tuple[str, str], list] | None = None  # best-so-far pair and its images, once seen

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


@dataclass
class Snapshot:
    """What the page shows of a job at one moment."""

    job_id: int
    state: str
    out: Path
    budget: float
    cost: float = 0.0
    evaluations: int = 0
    previews: int = 0  # cheaper looks of a multi-fidelity search (never the answer)
    best_loss: float | None = None
    best_prompt: str = ""
    best_negative_prompt: str = ""
    best_images: list | None = None  # tensors [3, H, W] in [0, 1], one per search seed
    best_images_pair: tuple[str, str] | None = None  # the (prompt, negative prompt) they show
    queue_position: int = 0  # runs ahead of a queued one (running or queued before it on its device)
    error: str = ""
    result: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.state in DONE


def read_progress(out: Path) -> tuple[float, int, int, dict[str, Any] | None]:
    """Cost spent, full evaluations and cheaper previews made (:mod:`dpo_diff.fidelity`), and the best so far,
    from the files a running ``optimize`` keeps on disk (a line being written is skipped: the next poll reads it)."""
    cost, n, looks = 0.0, 0, 0
    try:
        lines = (out / "progress.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
            cost = max(cost, float(record["cost"]))
        except (ValueError, KeyError, TypeError):
            continue
        if record.get("fidelity", "full") == "full":
            n += 1
        else:
            looks += 1
    try:
        best = json.loads((out / "best.json").read_text())
    except (OSError, ValueError):
        best = None
    return cost, n, looks, best


ModelLoader = Callable[[Models, str], tuple[Any, Any, Any]]


def load_models(models: Models, scheduler: str) -> tuple[Any, Any, Any]:
    """``(backend, judge, checker)``; the checker (ground truth) only in the shapes world."""
    from dpo_diff.backends.base import load_backend
    from dpo_diff.judges.clip import ClipJudge

    if models.world:
        from dpo_diff.world import generator_path, judge_path, load_checker, verify_model_folder

        for kind in ("generator", "judge", "checker"):
            verify_model_folder(kind)
        model, judge, checker = str(generator_path()), str(judge_path()), load_checker(device=models.device)
    else:
        model, judge, checker = str(models.model), models.judge or OptimizeConfig.judge, None
    backend = load_backend(model, device=models.device, scheduler=scheduler)  # any backend kind optimize loads
    return backend, ClipJudge.from_pretrained(judge, device=models.device), checker


def run_optimize(job: Job, loaded: tuple[Any, Any, Any]) -> dict[str, Any]:
    """The job's run: ``optimize`` with the loaded models, stopping when the job is cancelled."""
    from dpo_diff.optimize import optimize

    backend, judge, checker = loaded
    job.backend = RecordingBackend(backend)
    metric = None
    if checker is not None:
        from dpo_diff.world import faithfulness_metric

        metric = faithfulness_metric(checker, job.space.prompt, len(job.cfg.seeds))
    return optimize(job.cfg, space=job.space, backend=job.backend, judge=judge, progress=False,
                    extra_metrics=metric, should_stop=job.cancel_event.is_set)


def error_line(e: BaseException) -> str:
    """The one-line message the CLI prints for an error (our validation errors carry their own words)."""
    from dpo_diff.extras import as_missing_extra

    if isinstance(e, (ValueError, FileNotFoundError, OSError)):
        return str(e)
    missing = as_missing_extra(e, "the web app") if isinstance(e, ImportError) else None
    if missing is not None:
        return str(missing)  # names the extra to install
    return f"{type(e).__name__}: {e}"


class JobManager:
    """Queued runs, one at a time per device, each in the worker thread of its device.

    ``runner(job, loaded_models)`` does a run (default :func:`run_optimize`); ``loader(models, scheduler)`` loads
    the models once per worker and configuration (default :func:`load_models`). Tests pass light ones.
    """

    def __init__(self, root: Path, *, runner: Callable[[Job, Any], dict[str, Any]] = run_optimize,
                 loader: ModelLoader = load_models) -> None:
        self.root = Path(root)
        self._runner, self._loader = runner, loader
        self._jobs: dict[int, Job] = {}
        self._queues: dict[str, queue.Queue[Job | None]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._pending: dict[str, list[int]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def submit(self, cfg: OptimizeConfig, space: SearchSpace, models: Models) -> Job:
        with self._lock:
            job = Job(next(self._ids), cfg, space, models)
            self._jobs[job.id] = job
            device = models.device
            if device not in self._threads:
                self._queues[device] = queue.Queue()
                self._pending[device] = []
                self._threads[device] = threading.Thread(target=self._work, args=(device,), daemon=True,
                                                         name=f"dpo-diff-ui-{device}")
                self._threads[device].start()
            self._pending[device].append(job.id)
            self._queues[device].put(job)
        return job

    def get(self, job_id: int) -> Job:
        try:
            return self._jobs[int(job_id)]
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no job {job_id!r}") from None

    def cancel(self, job_id: int) -> None:
        """Stop a job: a queued one never starts, a running one stops after its current evaluation and keeps its
        best so far."""
        job = self.get(job_id)
        job.cancel_event.set()
        with self._lock:
            if job.state == "queued":
                job.state = "cancelled"

    def snapshot(self, job_id: int) -> Snapshot:
        job = self.get(job_id)
        snap = Snapshot(job.id, job.state, job.out, job.cfg.budget, error=job.error, result=job.result)
        with self._lock:
            if job.state == "queued":
                device = job.models.device
                running = sum(j.state == "running" and j.models.device == device for j in self._jobs.values())
                snap.queue_position = self._pending[device].index(job.id) + running
        snap.cost, snap.evaluations, snap.previews, best = read_progress(job.out)
        if best is not None:
            snap.best_loss = sum(best["losses"]) / len(best["losses"])
            snap.best_prompt, snap.best_negative_prompt = best["prompt"], best["negative_prompt"]
            self._update_live_images(job, best["prompt"], best["negative_prompt"])
        if job.live_images is not None:
            snap.best_images_pair, snap.best_images = job.live_images
        if job.result is not None:
            snap.cost = float(job.result["cost"])
        return snap

    @staticmethod
    def _update_live_images(job: Job, prompt: str, negative: str) -> None:
        """Keep the images of the newest best-so-far pair the recorder still has (it forgets old images as the
        search goes on; the snapshot says which pair the images show)."""
        pair = (prompt, negative)
        if job.backend is None or (job.live_images is not None and job.live_images[0] == pair):
            return
        found = job.backend.images_of(prompt, negative, job.cfg.seeds)
        if found is not None:
            job.live_images = (pair, found)

    def shutdown(self) -> None:
        """Cancel everything and let the workers end (they are daemon threads: a server exit never waits)."""
        for job in list(self._jobs.values()):
            if job.state not in DONE:
                self.cancel(job.id)
        for q in self._queues.values():
            q.put(None)

    def _work(self, device: str) -> None:
        loaded: dict[tuple, Any] = {}
        while True:
            job = self._queues[device].get()
            if job is None:
                return
            with self._lock:
                self._pending[device].remove(job.id)
                if job.state == "cancelled":
                    continue
                job.state = "running"
            self._run(job, loaded)

    def _run(self, job: Job, loaded: dict[tuple, Any]) -> None:
        try:
            key = (job.models, job.cfg.scheduler)
            if key not in loaded:
                loaded.clear()  # one set of models in memory per device
                loaded[key] = self._loader(job.models, job.cfg.scheduler)
            job.result = self._runner(job, loaded[key])
            job.state = "cancelled" if job.result.get("cancelled") else "finished"
        except Exception as e:  # noqa: BLE001 - any failure of a run is shown on the page, not a frozen worker
            traceback.print_exc()
            job.error = error_line(e)
            job.state = "failed"
