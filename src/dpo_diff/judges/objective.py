"""Objectives: a weighted sum of judge terms, normalised against the user prompt, with optional constraints.

An :class:`Objective` is a judge: ``loss(images, text) -> Tensor[B]`` (lower is better for improve; attack
maximises it), so :class:`~dpo_diff.problem.Problem`, the searches and the shortcut gradient use it unchanged, and
the gradient flows through every term. Definitions (``v_t``: term ``t``'s judge loss of an image, e.g. the
spherical CLIP loss or ``-rating`` of the aesthetic predictor):

* **Normalisation.** Before the search, the user prompt is generated on every seed the run scores (search,
  validation and report seeds) and each term is measured: ``u_t(s)`` on seed ``s``. The term's *scale* is
  ``|mean of u_t over the search seeds|`` (1 when that is below 1e-8). An image on seed ``s`` scores
  ``J = sum_t w_t (v_t - u_t(s)) / scale_t``: the weighted sum of relative changes against the user prompt on the
  same seed. The user prompt scores 0 on every seed; ``J = -0.05`` for improve means "5% better, weighted". So a
  weight is the price of a relative change of its term, whatever the judge's units. Scales and per-seed references
  are computed once per run and saved in ``result.json`` (``objective``).
* **Constraints** (``judge<=+M``): a candidate is *feasible* when its term's loss, averaged over the seeds of the
  evaluation, is at most ``M`` above the user prompt's average on the same seeds (so the user prompt is always
  feasible). In exact evaluation (what every search ranks by) an infeasible candidate's ``J`` gets
  ``sign * (INFEASIBLE + violation / scale)`` added on every seed: it ranks below every feasible candidate, and
  less-violating ones above more-violating ones. The shortcut gradient needs something differentiable, so there the
  constraint is a hinge penalty per image, ``sign * penalty * max(0, v_c - u_c - M) / scale_c`` with ``u_c`` the
  user prompt's mean on the search seeds (``penalty`` = 10 by default): it pushes the relaxed prompt back when it
  leaves the feasible region; feasibility itself is decided only by exact evaluation.
* **Sign.** ``sign`` is +1 for improve and -1 for attack: attack maximises ``J``, so penalties enter with ``-1``
  and still push the search away from infeasible prompts. Every term is a loss (lower = better image for that judge):
  an attack that maximises a CLIP term while an aesthetic constraint holds keeps the images pretty but unfaithful.
* **Uncalibrated** (``dpo-diff select``, where every prompt is its own user prompt): ``J = sum_t w_t v_t``, raw;
  constraints are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dpo_diff.judges.spec import JudgeRegistry, ObjectiveSpec, TermSpec, parse_objective

INFEASIBLE = 1000.0  # added to J of infeasible candidates: far above any weighted relative change
DEFAULT_PENALTY = 10.0
TOLERANCE = 1e-6  # float noise at a constraint's boundary (a candidate exactly at +M) is not a violation


@dataclass
class Calibration:
    """The user prompt's term values: ``reference[seed] = Tensor[T]``, ``center``/``scale`` over the search seeds."""

    reference: dict[int, Tensor]
    center: Tensor
    scale: Tensor
    search_seeds: tuple[int, ...]

    def to_dict(self, labels: list[str]) -> dict[str, Any]:
        return {"search_seeds": list(self.search_seeds),
                "center": dict(zip(labels, self.center.tolist())), "scale": dict(zip(labels, self.scale.tolist())),
                "user_per_seed": {str(s): dict(zip(labels, v.tolist())) for s, v in self.reference.items()}}


class Objective:
    """A weighted sum of judges with constraints (see the module docstring); a judge itself."""

    def __init__(self, spec: ObjectiveSpec, judges: Sequence[Any], *, sign: float = 1.0,
                 penalty: float = DEFAULT_PENALTY, calibration: Calibration | None = None) -> None:
        if len(judges) != len(spec.terms):
            raise ValueError(f"{len(spec.terms)} terms but {len(judges)} judges")
        if sign not in (1.0, -1.0):
            raise ValueError(f"sign must be +1 (improve) or -1 (attack), got {sign}")
        self.spec, self.judges, self.sign, self.penalty = spec, list(judges), float(sign), float(penalty)
        self.calibration = calibration
        self.weights = torch.tensor([t.weight for t in spec.terms], dtype=torch.float32)
        self.margins = torch.tensor([t.margin if t.is_constraint else 0.0 for t in spec.terms])
        self.is_constraint = torch.tensor([t.is_constraint for t in spec.terms])
        self.name = str(spec)

    @classmethod
    def from_spec(cls, spec: str | ObjectiveSpec, registry: JudgeRegistry | None = None, *, task: str = "improve",
                  penalty: float = DEFAULT_PENALTY) -> Objective:
        spec = parse_objective(spec) if isinstance(spec, str) else spec
        registry = registry or JudgeRegistry()
        return cls(spec, [registry.load(t.judge) for t in spec.terms], sign=1.0 if task == "improve" else -1.0,
                   penalty=penalty)

    @property
    def terms(self) -> tuple[TermSpec, ...]:
        return self.spec.terms

    @property
    def labels(self) -> list[str]:
        return [str(t.judge) for t in self.terms]

    # ------------------------------------------------------------------ term values
    def term_losses(self, images: Tensor, texts: Sequence[str] | str) -> Tensor:
        """Raw judge losses ``Tensor[B, T]``; judges on one backbone share one forward pass of the images."""
        features: dict[int, Tensor] = {}
        cols = []
        for judge in self.judges:
            key = id(judge.backbone)
            if key not in features:
                features[key] = judge.features(images)
            cols.append(judge.loss_from_features(features[key], texts).float())
        device = cols[0].device
        return torch.stack([c.to(device) for c in cols], dim=-1)

    # ------------------------------------------------------------------ calibration
    def calibrated(self, user_values: Tensor, seeds: Sequence[int], search_seeds: Sequence[int]) -> Objective:
        """A copy normalised against the user prompt's term values ``user_values[S, T]`` on ``seeds``."""
        seeds, search_seeds = [int(s) for s in seeds], tuple(int(s) for s in search_seeds)
        missing = [s for s in search_seeds if s not in seeds]
        if missing:
            raise ValueError(f"calibration needs the user prompt on every search seed; missing {missing}")
        ref = {s: user_values[i].detach().float().cpu() for i, s in enumerate(seeds)}
        center = torch.stack([ref[s] for s in search_seeds]).mean(0)
        scale = center.abs().where(center.abs() > 1e-8, torch.ones_like(center))
        return Objective(self.spec, self.judges, sign=self.sign, penalty=self.penalty,
                         calibration=Calibration(ref, center, scale, search_seeds))

    def _check_calibrated(self, what: str) -> Calibration | None:
        if self.calibration is None and bool(self.is_constraint.any()):
            raise ValueError(f"{what}: an objective with constraints must be calibrated against a user prompt "
                             f"first (Objective.calibrated / calibrate_objective)")
        return self.calibration

    # ------------------------------------------------------------------ the judge interface
    def loss(self, images: Tensor, texts: Sequence[str] | str) -> Tensor:
        """``J`` per image, ``Tensor[B]``, differentiable (the hinge penalty stands in for constraints)."""
        values = self.term_losses(images, texts)
        cal = self._check_calibrated("loss")
        w = self.weights.to(values.device)
        if cal is None:
            return (values * w).sum(-1)
        center, scale = cal.center.to(values.device), cal.scale.to(values.device)
        rel = (values - center) / scale
        hinge = ((values - center - self.margins.to(values.device)).clamp(min=0) / scale)
        hinge = hinge * self.is_constraint.to(values.device)
        return (rel * w).sum(-1) + self.sign * self.penalty * hinge.sum(-1)

    def rows(self, values: Tensor, seeds: Sequence[int]) -> Tensor:
        """Exact ``J`` ``Tensor[N, S]`` from term values ``[N, S, T]`` on ``seeds`` (constraints on seed means)."""
        values = values.float()
        cal = self._check_calibrated("rows")
        w = self.weights
        if cal is None:
            return (values * w).sum(-1)
        missing = [s for s in seeds if int(s) not in cal.reference]
        if missing:
            raise ValueError(f"the objective was calibrated on seeds {sorted(cal.reference)}, not on {missing}: "
                             f"calibrate on every seed the run scores")
        ref = torch.stack([cal.reference[int(s)] for s in seeds])  # [S, T]
        out = ((values - ref) / cal.scale * w).sum(-1)
        if bool(self.is_constraint.any()):
            excess = (values - ref).mean(1) - self.margins - TOLERANCE  # [N, T]: seed means against the user's
            violation = (excess.clamp(min=0) / cal.scale * self.is_constraint).sum(-1)  # [N]
            infeasible = (excess > 0) & self.is_constraint
            bump = torch.where(infeasible.any(-1), INFEASIBLE + violation, torch.zeros_like(violation))
            out = out + self.sign * bump[:, None]
        return out

    def feasible(self, values: Tensor, seeds: Sequence[int]) -> Tensor:
        """``Tensor[N]`` of bools: every constraint holds on the mean over ``seeds`` (all True without any)."""
        cal = self._check_calibrated("feasible")
        if cal is None or not bool(self.is_constraint.any()):
            return torch.ones(values.shape[0], dtype=torch.bool)
        ref = torch.stack([cal.reference[int(s)] for s in seeds])
        excess = (values.float() - ref).mean(1) - self.margins - TOLERANCE
        return ~((excess > 0) & self.is_constraint).any(-1)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": str(self.spec), "sign": self.sign, "penalty": self.penalty,
                             "infeasible_offset": INFEASIBLE,
                             "terms": [{"judge": str(t.judge), "weight": t.weight, "margin": t.margin}
                                       for t in self.terms]}
        if self.calibration is not None:
            d["calibration"] = self.calibration.to_dict(self.labels)
        return d


# ---------------------------------------------------------------------- what Problem calls
def judge_values(judge: Any, images: Tensor, text: str) -> Tensor:
    """Per-image values of any judge: ``Tensor[B]`` for a plain judge, ``Tensor[B, T]`` for an objective."""
    f = getattr(judge, "term_losses", None)
    return (f or judge.loss)(images, text)


def judge_rows(judge: Any, values: Tensor, n: int, seeds: Sequence[int]) -> Tensor:
    """``Tensor[N, S]`` losses of ``n`` prompts on ``seeds`` from the concatenated per-image values."""
    rows = getattr(judge, "rows", None)
    if rows is None:
        return values.view(n, len(seeds))
    return rows(values.view(n, len(seeds), -1), seeds)


def calibrate_objective(problem, seeds: Sequence[int], search_seeds: Sequence[int]) -> None:
    """Replace ``problem.judge`` (an :class:`Objective`) by a copy calibrated on the user prompt's images on
    ``seeds`` (every seed the run scores); a plain judge is left as is."""
    judge = problem.judge
    if not isinstance(judge, Objective):
        return
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    user = problem.space.render(problem.space.default)
    with torch.no_grad():
        images = problem.generate([user], seeds)
        values = judge.term_losses(images, problem.user_prompt)
    problem.judge = judge.calibrated(values, seeds, search_seeds)
