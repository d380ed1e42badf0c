"""The optimization problem: a search space, a task, a generator, a judge and how images are sampled.

:class:`Problem` owns exact candidate evaluation (the full sampler, batched over candidates x seeds, with automatic
back-off on out-of-memory) and the task's sign: DPO-Diff *improve* minimises the spherical CLIP loss to the user
prompt; *attack* maximises it. Searches minimise :meth:`Task.objective`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dpo_diff.device import is_out_of_memory, release_memory
from dpo_diff.fidelity import FULL, Fidelity
from dpo_diff.space import Candidate, PromptPair, SearchSpace

TASKS = ("improve", "attack")
TaskName = Literal["improve", "attack"]


@dataclass(frozen=True)
class Task:
    """``improve``: make images follow the prompt (negative-prompt terms, by default with synonym swaps of the
    prompt's words: the hybrid space; minimise the loss). ``attack``: a meaning-preserving synonym rewrite that breaks
    faithfulness (positive space, maximise the loss)."""

    name: TaskName

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; choose one of {TASKS}")

    @property
    def sign(self) -> float:
        return 1.0 if self.name == "improve" else -1.0

    def objective(self, loss):
        """The value every search minimises (loss for improve, -loss for attack)."""
        return loss * self.sign

    @property
    def default_target(self) -> Literal["negative", "positive"]:
        """The slots the task cannot search without (improve's ``auto`` also takes a space's positive slots:
        :func:`dpo_diff.optimize.select_target`)."""
        return "negative" if self.name == "improve" else "positive"


def check_guidance(guidance: float) -> None:
    """Refuse a guidance scale that is not a finite number >= 0 (NaN would run and write invalid JSON)."""
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"--guidance must be a finite number >= 0 (the classifier-free guidance scale), got "
                         f"{guidance}")


def check_negative_guidance(task: str, target: str, guidance: float | None) -> None:
    """Refuse a search over negative prompts without classifier-free guidance: at guidance <= 1 the negative prompt
    does not act, so every candidate would give the same images."""
    chosen = Task(task).default_target if target == "auto" else target
    if guidance is not None and guidance <= 1 and chosen in ("negative", "both"):
        searched = f"--task {task}" if target == "auto" else f"--target {target}"
        raise ValueError(f"{searched} searches negative prompts, which act only through classifier-free guidance: "
                         f"--guidance must be above 1, got {guidance:g} (on FLUX: true classifier-free guidance, "
                         f"the pipeline's true_cfg_scale > 1); --task attack rewrites the prompt and needs none")


@dataclass(frozen=True)
class SamplingConfig:
    """How images are generated for evaluation and in the shortcut gradient (paper: 50 DDIM steps, CFG 7.5)."""

    steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    """Rows (candidate x seed) per UNet batch for full-sampler evaluation; halves automatically on OOM."""
    grad_checkpointing: bool = False
    """Gradient checkpointing of the shortcut's grad-enabled denoiser calls and VAE decode (same gradient, less
    memory; :func:`~dpo_diff.shortcut.shortcut_images`)."""

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2, got {self.steps}")
        check_guidance(self.guidance_scale)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Problem:
    """Everything a search needs. ``constraint`` (optional) accepts or rejects candidate prompts (attack meaning
    preservation): ``constraint(user_prompt, [candidate prompts]) -> [bool]``."""

    space: SearchSpace
    task: Task
    backend: object  # a dpo_diff.backends.base.DiffusionBackend
    judge: object  # ClipJudge
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    constraint: Callable[[str, list[str]], list[bool]] | None = None
    # Told the full-generation equivalents of every generated batch: progress where no evaluation is reported
    # (re-ranking, the report's images).
    on_generated: Callable[[float], None] | None = field(default=None, repr=False, compare=False)

    @property
    def user_prompt(self) -> str:
        return self.space.prompt

    def render(self, candidate: Candidate) -> PromptPair:
        return self.space.render(candidate)

    def check_lengths(self, pairs: Sequence[PromptPair]) -> None:
        """Raise :class:`~dpo_diff.relax.PromptTooLongError` (a ``ValueError``) for a text the backend cannot take."""
        for p in pairs:
            for text in (p.prompt, p.negative_prompt):
                self.backend.check_prompt(text)

    def generate(self, pairs: Sequence[PromptPair], seeds: Sequence[int]) -> Tensor:
        """Images ``Tensor[N * S, 3, H, W]`` for every pair on every seed (rows: pair-major), batched."""
        rows = [(p, s) for p in pairs for s in seeds]
        return torch.cat([imgs for _, imgs in self._batches(rows)]) if rows else torch.empty(0)

    def losses(self, pairs: Sequence[PromptPair], seeds: Sequence[int],
               keep_images: bool = False, steps: int | None = None) -> tuple[Tensor, Tensor | None]:
        """The judge's loss to the user prompt, ``Tensor[N, S]``, from the full sampler (and the images); with an
        objective, its ``J`` (:mod:`dpo_diff.judges.objective`). ``steps``: a few-step generation instead (the
        same scheduler and seeds)."""
        from dpo_diff.judges.objective import judge_rows, judge_values

        rows = [(p, s) for p in pairs for s in seeds]

        def run(chunk):  # generation and judge in one back-off unit: a judge out of memory halves the batch too
            imgs = self._generate(chunk, steps)
            with torch.no_grad():
                values = judge_values(self.judge, imgs, self.user_prompt).cpu()  # [B] or [B, terms]
            return values, (imgs.cpu() if keep_images else None)

        parts = [out for _, out in self._backoff(rows, run)]
        out = (judge_rows(self.judge, torch.cat([v for v, _ in parts]), len(pairs), seeds) if rows
               else torch.empty(len(pairs), len(seeds)))
        return out, (torch.cat([i for _, i in parts]) if keep_images and parts else None)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The generator's dtype (fp16 needs loss scaling for the text gradient)."""
        return self.backend.dtype

    def relaxation(self) -> Callable[..., Tensor]:
        """The shortcut-gradient loss of the relaxed space: ``f(weights[S, O], seeds, start_step, grad_steps)``
        -> spherical losses ``Tensor[len(seeds)]``, differentiable in ``weights``.

        The Gumbel-softmax mixtures go through the backend's text encoders for whichever sides have slots
        (:meth:`~dpo_diff.backends.base.DiffusionBackend.relaxed_conditioning`).
        """
        from dpo_diff.shortcut import shortcut_images

        sc = self.sampling
        encode = self.backend.relaxed_conditioning(self.space, guidance_scale=sc.guidance_scale)

        def loss(weights: Tensor, seeds: Sequence[int], *, start_step: int, grad_steps: int) -> Tensor:
            images = shortcut_images(self.backend, encode(weights), seeds, steps=sc.steps,
                                     guidance_scale=sc.guidance_scale, start_step=start_step, grad_steps=grad_steps,
                                     height=sc.height, width=sc.width, checkpointing=sc.grad_checkpointing)
            return self.judge.loss(images, self.user_prompt)

        return loss

    def candidate_losses(self, candidates: Sequence[Candidate], seeds: Sequence[int],
                         fidelity: Fidelity | str = FULL) -> Tensor:
        """Losses ``Tensor[N, S']`` of candidates at a fidelity (:mod:`dpo_diff.fidelity`; default the full sampler
        on their exactly tokenized text, what searches are judged by). ``S'``: the fidelity's share of ``seeds``."""
        fid = Fidelity.parse(fidelity, self.sampling.steps).normalized(self.sampling.steps, len(seeds))
        fid.check(self.sampling.steps)
        seeds = fid.seed_subset(tuple(seeds))
        if fid.kind == "shortcut":
            return self.shortcut_losses(candidates, seeds, fid.level)
        steps = fid.level if fid.kind == "steps" else None
        return self.losses([self.render(c) for c in candidates], seeds, steps=steps)[0]

    def calls_for(self, steps: int | None = None) -> int:
        """Denoiser calls of a ``steps``-step generation (``None``: the sampler's), as its scheduler lays them out
        (Heun: 2n - 1); the unit of :meth:`dpo_diff.fidelity.Fidelity.cost`."""
        n = self.sampling.steps if steps is None else steps
        cache = self.__dict__.setdefault("_calls", {})
        if n not in cache:
            sc = self.sampling
            cache[n] = len(self.backend.new_scheduler(n, sc.height, sc.width).timesteps)
        return cache[n]

    def shortcut_losses(self, candidates: Sequence[Candidate], seeds: Sequence[int], k: int) -> Tensor:
        """The no-grad shortcut loss ``Tensor[N, S]`` at each candidate's one-hot corner: k sampling steps, one more
        model call, the x0 jump, decode, judge (the function GPO descends; corners encode as the rendered text)."""
        from dpo_diff.judges.objective import judge_rows, judge_values
        from dpo_diff.relax import WordMixture
        from dpo_diff.shortcut import shortcut_images

        sc, space = self.sampling, self.space
        corners = WordMixture(space.sizes)
        encode = self.__dict__.get("_corner_encode")
        if encode is None:
            encode = self._corner_encode = self.backend.relaxed_conditioning(space, guidance_scale=sc.guidance_scale)
        rows = [(c, s) for c in candidates for s in seeds]

        def run(chunk):
            weights = torch.stack([corners.one_hot(c) for c, _ in chunk])
            with torch.no_grad():
                imgs = shortcut_images(self.backend, encode(weights), [s for _, s in chunk], steps=sc.steps,
                                       guidance_scale=sc.guidance_scale, start_step=k, grad_steps=1,
                                       height=sc.height, width=sc.width)
                return judge_values(self.judge, imgs, self.user_prompt).cpu()

        values = [v for _, v in self._backoff(rows, run)]
        return (judge_rows(self.judge, torch.cat(values), len(candidates), seeds) if rows
                else torch.empty(len(candidates), len(seeds)))

    def _generate(self, chunk: list[tuple[PromptPair, int]], steps: int | None = None) -> Tensor:
        """One batch of the sampler; every generation of the problem goes through here (and tells
        :attr:`on_generated`)."""
        sc = self.sampling
        images = self.backend.generate([p.prompt for p, _ in chunk], [p.negative_prompt for p, _ in chunk],
                                       [s for _, s in chunk], steps=steps or sc.steps,
                                       guidance_scale=sc.guidance_scale, height=sc.height, width=sc.width)
        if self.on_generated is not None:
            self.on_generated(len(chunk) * (steps or sc.steps) / sc.steps)  # a few-step preview costs less
        return images

    def _batches(self, rows: list[tuple[PromptPair, int]], steps: int | None = None):
        """Yield ``(rows, images)`` batches of the sampler (``steps``: a few-step generation instead)."""
        yield from self._backoff(rows, lambda chunk: self._generate(chunk, steps))

    def _backoff(self, rows: list, run: Callable[[list], object]):
        """Yield ``(rows, run(rows))`` in batches; on out-of-memory (:func:`dpo_diff.device.is_out_of_memory`)
        halve the batch size and retry."""
        i, bs = 0, getattr(self, "_batch_size", self.sampling.batch_size)
        while i < len(rows):
            chunk, out, failed = rows[i : i + bs], None, False
            try:
                out = run(chunk)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is retried
                if bs == 1 or not is_out_of_memory(e):
                    raise
                failed = True
            if failed:
                # Only here, after the except block: until it ends, the exception's traceback pins the failed
                # attempt's frames and activations, so emptying the cache inside it would free nothing.
                bs = self._batch_size = max(1, bs // 2)  # remembered: later calls start from the size that fit
                release_memory()
                continue
            yield chunk, out
            i += len(chunk)
