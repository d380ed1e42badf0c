"""Fidelities: cheaper, noisier ways to score a candidate than the full sampler, and what each one costs.

Multi-fidelity search (successive halving, Hyperband, BOHB) looks at many candidates cheaply and spends full
evaluations on the promising ones. For prompts the cheap looks are

* ``full``: the full sampler (``SamplingConfig.steps`` steps), the objective every search is judged by;
* ``steps:N``: a *few-step generation*: the same scheduler, the same image seeds, N sampling steps instead of all;
* ``shortcut:K``: the no-grad *shortcut loss* at K (K sampling steps, one more model call, the one-step x0 jump,
  decode, judge): the function GPO's shortcut text gradient descends, evaluated at the candidate's one-hot corner
  without a gradient;

and, on any of them, ``@N``: only the first N search seeds (fewer seeds is a fidelity axis of its own).

**Cost, one definition** (:meth:`Fidelity.cost`): in full-generation equivalents, i.e. denoiser calls divided by
the denoiser calls of one full generation, times the seeds scored. Decoding and judging happen once per image at
every fidelity and are not counted (on the shapes world they are a small share of a generation; the wall-seconds
view of ``bench`` shows the true time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FIDELITY_KINDS = ("full", "steps", "shortcut")
_SPEC = re.compile(r"^(full|steps:(\d+%?)|shortcut:(\d+%?))(?:@(\d+))?$")


@dataclass(frozen=True)
class Fidelity:
    """One way to score a candidate. ``level``: sampling steps (``steps``) or no-grad steps K (``shortcut``);
    ``seeds``: score on the first ``seeds`` search seeds only (0: all of them)."""

    kind: str = "full"
    level: int = 0
    seeds: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FIDELITY_KINDS:
            raise ValueError(f"unknown fidelity kind {self.kind!r}; choose one of {FIDELITY_KINDS}")
        if self.kind == "full" and self.level:
            raise ValueError("the full sampler takes no level; use steps:N for a few-step generation")
        if self.kind == "steps" and self.level < 1:
            raise ValueError(f"a few-step generation needs at least 1 step, got steps:{self.level}")
        if self.kind == "shortcut" and self.level < 0:
            raise ValueError(f"the shortcut's K must be >= 0, got shortcut:{self.level}")
        if self.seeds < 0:
            raise ValueError(f"seeds must be >= 0 (0: every search seed), got {self.seeds}")

    @classmethod
    def parse(cls, spec: str | Fidelity, steps: int | None = None) -> Fidelity:
        """``full``, ``steps:N``, ``shortcut:K``, each optionally ``@SEEDS`` (e.g. ``shortcut:6@1``). N and K may
        be a percentage of the sampler's ``steps`` (``shortcut:30%``: K = round(0.3 * steps), at least 1 for
        ``steps``), so one ladder serves every step count."""
        if isinstance(spec, Fidelity):
            return spec
        m = _SPEC.match(str(spec).strip())
        if not m:
            raise ValueError(f"bad fidelity {spec!r}; use full, steps:N or shortcut:K (N, K a count or a percentage "
                             f"of the sampling steps, e.g. shortcut:30%), optionally followed by @SEEDS (e.g. "
                             f"shortcut:6@1: the shortcut loss at K=6 on the first search seed)")
        kind = m.group(1).split(":")[0]
        text = m.group(2) or m.group(3) or "0"
        if text.endswith("%"):
            if steps is None:
                raise ValueError(f"fidelity {spec!r} is a share of the sampling steps; give the steps to resolve it")
            level = max(1 if kind == "steps" else 0, round(int(text[:-1]) / 100 * steps))
        else:
            level = int(text)
        return cls(kind, level, int(m.group(4) or 0))

    @property
    def name(self) -> str:
        base = self.kind if self.kind == "full" else f"{self.kind}:{self.level}"
        return f"{base}@{self.seeds}" if self.seeds else base

    def __str__(self) -> str:
        return self.name

    def normalized(self, steps: int, num_seeds: int) -> Fidelity:
        """The same fidelity with settings that change nothing removed: ``steps:N`` at N >= the sampler's steps is
        the full sampler, and ``@S`` with S >= the number of search seeds is every seed."""
        kind, level = self.kind, self.level
        if kind == "steps" and level >= steps:
            kind, level = "full", 0
        seeds = 0 if self.seeds >= num_seeds else self.seeds
        return Fidelity(kind, level, seeds)

    def check(self, steps: int) -> None:
        """Refuse a shortcut that cannot run within ``steps`` sampling steps (the x0 jump needs one more call)."""
        if self.kind == "shortcut" and self.level > steps - 1:
            raise ValueError(f"shortcut:{self.level} needs K <= steps - 1 = {steps - 1} (K no-grad steps, then one "
                             f"model call and the x0 jump)")

    @property
    def is_full(self) -> bool:
        return self.kind == "full" and self.seeds == 0

    def seed_subset(self, seeds: tuple[int, ...]) -> tuple[int, ...]:
        return seeds[: self.seeds] if self.seeds else seeds

    def model_calls(self, calls_for) -> int:
        """Denoiser calls per image; ``calls_for(n)``: the calls of an n-step generation (``None``: the full one)."""
        if self.kind == "full":
            return calls_for(None)
        if self.kind == "steps":
            return calls_for(self.level)
        return self.level + 1  # K no-grad scheduler entries, then the one model call that jumps to x0

    def cost(self, calls_for, num_seeds: int) -> float:
        """Full-generation equivalents of scoring one candidate at this fidelity (see the module docstring)."""
        n = min(self.seeds, num_seeds) if self.seeds else num_seeds
        return n * generation_equivalents(self.model_calls(calls_for), calls_for(None))


def generation_equivalents(calls: float, full_calls: int) -> float:
    """The budget's one rule: ``calls`` denoiser calls on one seed are ``calls / full_calls`` full generations
    (GPO's shortcut passes, :mod:`dpo_diff.search.cost`, and every fidelity are charged by it)."""
    if full_calls < 1:
        raise ValueError(f"a full generation makes at least one denoiser call, got full_calls={full_calls}")
    return calls / full_calls


FULL = Fidelity()


def parse_ladder(text: str | list | tuple, steps: int | None = None) -> tuple[Fidelity, ...]:
    """A comma-separated list of fidelities, cheapest first, ending at ``full`` (added if missing)."""
    items = [s for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip()]
    if not items:
        raise ValueError("the fidelity ladder is empty; give its rungs cheapest first, ending at full, e.g. "
                         "steps:20%,full (or full alone: no cheap looks)")
    ladder = [Fidelity.parse(s, steps) for s in items]
    if not ladder or not ladder[-1].is_full:
        ladder.append(FULL)
    if any(f.is_full for f in ladder[:-1]):
        raise ValueError(f"the fidelity ladder {[f.name for f in ladder]} has 'full' before its last rung; list the "
                         f"cheap rungs first")
    return tuple(ladder)


def check_ladder(ladder, steps: int, num_seeds: int | None = None) -> tuple[Fidelity, ...]:
    """A ladder resolved at ``steps`` sampling steps and ``num_seeds`` search seeds, every rung checked (a clear
    error before anything runs). A cheap rung that would not be cheaper (``steps:N`` with N at or above ``steps``)
    or asks for more seeds than the search has is refused: the search would otherwise drop or clamp it silently."""
    items = [s for s in (ladder.split(",") if isinstance(ladder, str) else ladder) if str(s).strip()]
    rungs = parse_ladder(items, steps)
    for spec, f in zip(items, rungs):
        f.check(steps)
        if f.kind == "steps" and f.level >= steps:
            raise ValueError(f"{str(spec).strip()} is {f.level} steps, not fewer than the full sampler's {steps}: a "
                             f"cheap rung needs fewer steps (at most {steps - 1}, or a percentage below 100%)")
        if num_seeds is not None and f.seeds > num_seeds:
            raise ValueError(f"{str(spec).strip()} scores on {f.seeds} search seeds, but the search has {num_seeds}: "
                             f"@S must be at most the number of search seeds")
    return rungs
