"""Seed-robust selection of the final answer.

A candidate that wins on one image seed is often a fluke of that seed (a negative prompt that fixes one image and
hurts the rest). Two remedies, both charged to the same budget:

* search on several image seeds (every evaluation costs one generation per seed), or
* **re-rank**: after the search, score its ``top`` best candidates on extra *validation* seeds and pick the best
  mean over search and validation seeds. The re-ranking budget is reserved before the search starts.

Validation seeds must differ from the search seeds and from the held-out report seeds (those measure the result).

**Selection judges** (``SelectionConfig.judges``, ``--select-judge``) resist judge gaming: the re-ranking's images
(the top candidates' and the user prompt's, on the validation seeds) are also scored by other judges, and an answer
replaces the user prompt only if *every* selection judge prefers it to the user prompt on those seeds (the
agreement rule). Candidates are tried in the order of the first selection judge; the record names the judges that
vetoed each one. The user prompt's validation images are the baseline and are not charged to the budget (as the user
prompt's losses elsewhere); the record counts them (``baseline_generations``) and the judge scorings
(``select_calls``) beside the charged generations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from dpo_diff.search.base import Evaluation, Evaluator


@dataclass(frozen=True)
class SelectionConfig:
    """How the final answer is chosen among the evaluated candidates.

    Re-ranking spends at most ``max_share`` of the budget: with a smaller budget fewer candidates are re-ranked, and
    below two it is skipped (the search then keeps the whole budget). Empty ``validation_seeds`` are chosen by
    :meth:`resolved`: the ``num_validation`` smallest seeds above the search seeds that are not report seeds.
    ``judges`` (judge specs, see :mod:`dpo_diff.judges.spec`) turn on the agreement rule of the module docstring;
    they need re-ranking (``rerank_top >= 2``) and are never the ground-truth checker.
    """

    rerank_top: int = 0  # re-score this many of the best candidates on the validation seeds; 0: no re-ranking
    validation_seeds: tuple[int, ...] = ()  # empty: chosen by resolved()
    num_validation: int = 2
    max_share: float = 0.2
    judges: tuple[str, ...] = ()  # selection judges (judge specs): an answer must be preferred by every one of them

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_seeds", tuple(int(s) for s in self.validation_seeds))
        object.__setattr__(self, "judges", normalised_select_judges(self.judges))
        if self.rerank_top < 0:
            raise ValueError(f"rerank_top must be >= 0, got {self.rerank_top}")
        if self.num_validation < 1:
            raise ValueError(f"num_validation must be >= 1, got {self.num_validation}")
        if not 0 < self.max_share < 1:
            raise ValueError(f"max_share must be in (0, 1), got {self.max_share}")
        if len(set(self.validation_seeds)) != len(self.validation_seeds):
            raise ValueError(f"validation seeds repeat a seed: {list(self.validation_seeds)}")
        if self.judges and self.rerank_top < 2:
            raise ValueError(f"selection judges {list(self.judges)} score the re-ranking's images, but re-ranking is "
                             f"off (rerank_top {self.rerank_top}); re-rank at least two candidates (--rerank-top N, "
                             f"N >= 2) or drop --select-judge")

    @property
    def active(self) -> bool:
        return self.rerank_top > 0

    def resolved(self, search_seeds: Sequence[int], report_seeds: Sequence[int] = ()) -> SelectionConfig:
        """A copy with explicit validation seeds (checked against the search and report seeds)."""
        if not self.active or self.validation_seeds:
            self.check_seeds(search_seeds, report_seeds)
            return self
        taken, seeds, s = set(search_seeds) | set(report_seeds), [], max(search_seeds, default=-1) + 1
        while len(seeds) < self.num_validation:
            if s not in taken:
                seeds.append(s)
            s += 1
        return replace(self, validation_seeds=tuple(seeds))

    def top_for(self, budget: float) -> int:
        """How many candidates are re-ranked at ``budget`` (0: re-ranking skipped)."""
        n_val = len(self.validation_seeds)
        if not self.active or not n_val:
            return 0
        top = min(self.rerank_top, int((self.max_share * budget + 1e-9) // n_val))
        return top if top >= 2 else 0

    def reserve(self, budget: float) -> float:
        """Budget set aside for re-ranking (full-generation equivalents)."""
        return float(self.top_for(budget) * len(self.validation_seeds))

    def search_budget(self, budget: float) -> float:
        """What the search itself may spend of ``budget``: all but the re-ranking's reserve."""
        return budget - self.reserve(budget)

    def check_seeds(self, search_seeds: Sequence[int], report_seeds: Sequence[int] = ()) -> None:
        clash = set(self.validation_seeds) & (set(search_seeds) | set(report_seeds))
        if self.active and clash:
            raise ValueError(f"validation seeds {sorted(clash)} are also search or report seeds; validation seeds "
                             f"must be seeds the search never saw and the report does not use")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["validation_seeds"] = list(self.validation_seeds)
        # Saved only when used: configs and bench fingerprints without selection judges stay what they were.
        if self.judges:
            d["judges"] = list(self.judges)
        else:
            del d["judges"]
        return d


def normalised_select_judges(judges: Sequence[str] | str) -> tuple[str, ...]:
    """Selection judge specs parsed (a bad spec fails before anything loads) and written canonically, each once.

    The shapes world's ground-truth checker is refused: it measures the result, so choosing answers with it would
    leak the measurement into the method."""
    from dpo_diff.judges.spec import parse_judges

    if isinstance(judges, str):
        judges = [judges]
    specs = parse_judges([str(j) for j in judges]) if judges else ()
    if any(s.kind == "checker" for s in specs):
        raise ValueError("the checker is the shapes world's ground truth, never a selection judge (it would choose "
                         "answers by the measurement they are reported with); give clip:, siglip:, aesthetic: or "
                         "vqa: judges to --select-judge, and the checker to --eval-judges")
    names = [str(s) for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"selection judges name {repeated} twice; give each judge once")
    return tuple(names)


def rerank(problem, evaluator: Evaluator, selection: SelectionConfig, top: int,
           select_judges: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score the search's best ``top`` candidates on the validation seeds; return the record (candidates with
    their validation losses and combined mean) with the winner first.

    With ``select_judges`` (``{spec: judge}``, the loaded :attr:`SelectionConfig.judges`) the winner is chosen by
    the agreement rule instead (:func:`judged_rerank`)."""
    import time

    seeds = selection.validation_seeds
    best = sorted(evaluator.evaluations.values(), key=lambda e: e.objective)[:top]
    # The agreement rule compares each candidate with the user prompt, so one candidate is already a comparison.
    if len(best) < (1 if select_judges else 2):
        return {"validation_seeds": list(seeds), "cost": 0.0, "candidates": [], "skipped": "fewer than two "
                "candidates to compare (a tiny space or budget)"}
    t0, judging = time.perf_counter(), evaluator.timings.get("select_judges", 0.0)
    if select_judges:
        record = judged_rerank(problem, evaluator, best, seeds, select_judges)
    else:
        val = problem.candidate_losses([e.candidate for e in best], seeds)
        rows = [_row(problem, e, [float(x) for x in val[i]]) for i, e in enumerate(best)]
        rows.sort(key=lambda r: r["objective"])  # stable: ties keep the search's order
        record = {"validation_seeds": list(seeds), "cost": float(len(best) * len(seeds)), "candidates": rows}
    judging = evaluator.timings.get("select_judges", 0.0) - judging  # its own phase, not part of "rerank"
    evaluator.timings["rerank"] = evaluator.timings.get("rerank", 0.0) + time.perf_counter() - t0 - judging
    return record


def judged_rerank(problem, evaluator: Evaluator, best: list[Evaluation], seeds: Sequence[int],
                  select_judges: Mapping[str, Any]) -> dict[str, Any]:
    """The agreement rule. The candidates and the user prompt are generated on the validation seeds in one call,
    every image is scored by every selection judge against the user prompt, and candidates are ordered by the first
    judge's mean (task objective; ties keep the search's order). The answer is the first candidate whose mean
    objective is strictly below the user prompt's for *every* judge; its row goes first. None: ``kept_user``.

    Charged: the candidates' generations (``cost``), as without selection judges. The user prompt's are the
    baseline every answer must beat and are not charged (``baseline_generations``; none when the user prompt is
    among the candidates, whose images it then shares)."""
    import time

    user = problem.space.render(problem.space.default)
    pairs = [problem.render(e.candidate) for e in best]
    user_at = pairs.index(user) if user in pairs else len(pairs)
    generated = pairs + ([user] if user_at == len(pairs) else [])
    losses, images = problem.losses(generated, seeds, keep_images=True)
    t0 = time.perf_counter()
    means = {name: judge_means(judge, images, problem.user_prompt, len(generated), getattr(
        getattr(problem, "sampling", None), "batch_size", 8)) for name, judge in select_judges.items()}
    evaluator.timings["select_judges"] = evaluator.timings.get("select_judges", 0.0) + time.perf_counter() - t0
    objective = problem.task.objective
    rows = []
    for i, e in enumerate(best):
        row = _row(problem, e, [float(x) for x in losses[i]])
        row["select_losses"] = {name: m[i] for name, m in means.items()}
        row["vetoed_by"] = [name for name, m in means.items() if not objective(m[i]) < objective(m[user_at])]
        rows.append(row)
    first = next(iter(means))
    rows.sort(key=lambda r: objective(r["select_losses"][first]))  # stable: ties keep the search's order
    answer = next((r for r in rows if not r["vetoed_by"]), None)
    if answer is not None:
        rows.remove(answer)
        rows.insert(0, answer)
    # The user prompt may be among the search's best: no judge prefers it to itself, which is no veto to report.
    itself = list(best[user_at].candidate) if user_at < len(best) else None
    rivals = [r for r in rows if r["candidate"] != itself]
    return {"validation_seeds": list(seeds), "cost": float(len(best) * len(seeds)), "candidates": rows,
            "select_judges": list(means), "compared": len(rivals),
            "vetoes": {name: sum(name in r["vetoed_by"] for r in rivals) for name in means},
            "user_validation_losses": [float(x) for x in losses[user_at]],
            "user_select_losses": {name: m[user_at] for name, m in means.items()}, "kept_user": answer is None,
            "select_calls": len(generated) * len(seeds) * len(means),
            "baseline_generations": len(seeds) if user_at == len(pairs) else 0}


def judge_means(judge, images, text: str, prompts: int, batch: int) -> list[float]:
    """A judge's mean loss per prompt of ``images`` (prompt-major rows, the same number of seeds each), scored in
    batches of ``batch`` images under ``no_grad``."""
    import torch

    with torch.no_grad():
        values = torch.cat([judge.loss(images[i : i + batch], text).float().cpu()
                            for i in range(0, len(images), max(1, batch))])
    return [float(x) for x in values.reshape(prompts, -1).mean(dim=1)]


def user_evaluation(problem, evaluator: Evaluator, record: dict[str, Any], cost: float) -> Evaluation:
    """The user prompt as the answer of a search whose every candidate was vetoed: its search evaluation when the
    search scored it, else one made of its losses on the validation seeds (computed by the re-ranking, so nothing is
    generated or charged again; ``source`` says so). The latter joins ``evaluator.evaluations`` but never calls
    ``on_evaluation``: a resumed search must not take validation-seed losses for search-seed ones."""
    default = tuple(problem.space.default)
    if default in evaluator.evaluations:
        return evaluator.evaluations[default]
    losses = list(record["user_validation_losses"])
    pair = problem.render(default)
    ev = Evaluation(default, pair.prompt, pair.negative_prompt, losses,
                    float(problem.task.objective(sum(losses) / len(losses))), cost, "user-baseline (validation seeds)")
    evaluator.evaluations[default] = ev
    return ev


def _row(problem, ev: Evaluation, val_losses: list[float]) -> dict[str, Any]:
    losses = list(ev.losses) + val_losses
    mean = sum(losses) / len(losses)
    return {"candidate": list(ev.candidate), "search_losses": list(ev.losses), "validation_losses": val_losses,
            "mean_loss": mean, "objective": float(problem.task.objective(mean))}
