"""The report's cross-judge table: does a method's gain on the judge it optimized carry over to judges it never saw?

Records written with ``--objective`` or ``--eval-judges`` carry ``judges``: per judge its role (``objective``: the
judge or a term the search optimized; ``eval``: an evaluator) and the report-seed losses of the user prompt and of
the answer. Per method, over the compared prompts, each column is the mean paired change ``answer - user`` of that
judge's loss (every judge's loss is lower-is-better; the checker's is ``1 - all_correct``). A method whose
optimized loss moved in the task's direction while an evaluator's did not (moved the other way, or not at all) is
flagged: its gain does not carry over, the mark of a search gaming its judge. No torch needed.
"""

from __future__ import annotations

from typing import Any

from dpo_diff.judges.spec import parse_judge


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def judge_names(data: Any) -> list[tuple[str, str]]:
    """``(name, role)`` of every judge in the compared records, objective terms first, in first-seen order."""
    seen: dict[str, str] = {}
    for p in data.prompts:
        for m in data.methods:
            for name, j in data.records[(p, m)].get("judges", {}).items():
                seen.setdefault(name, j["role"])
    return sorted(seen.items(), key=lambda kv: kv[1] != "objective")


def _label(name: str) -> str:
    try:
        return parse_judge(name).label
    except ValueError:
        return name


def cross_judge_table(data: Any) -> tuple[list[str], list[list[str]]] | None:
    """Header and cells of the cross-judge table (``None`` when no record has judges)."""
    names = judge_names(data)
    if not names:
        return None
    sign = data.sign
    feas = any("feasible" in data.records[(p, m)] for p in data.prompts for m in data.methods)
    header = ["method", "Δ optimized"] + [f"Δ {_label(n)}{' (eval)' if r == 'eval' else ''}" for n, r in names]
    header += (["feasible"] if feas else []) + ["gain carries over"]
    rows_by_method = {r.method: r for r in data.rows}
    cells = []
    for m in data.methods:
        recs = [data.records[(p, m)] for p in data.prompts]
        opt = rows_by_method[m].delta.mean
        row = [m, f"{opt:+.4f}"]
        lost = []
        for name, role in names:
            if not all(name in r.get("judges", {}) for r in recs):
                row.append("-")
                continue
            deltas = [_mean(r["judges"][name]["best"]) - _mean(r["judges"][name]["user"]) for r in recs]
            d = _mean(deltas)
            better = sum(sign * x < 0 for x in deltas)
            row.append(f"{d:+.4f} ({better}/{len(deltas)} better)")
            if role == "eval" and sign * d >= 0:
                lost.append(_label(name))
        if feas:
            ok = [r["feasible"] for r in recs if "feasible" in r]
            row.append(f"{sum(ok)}/{len(ok)}" if ok else "-")
        if m == "user" or sign * opt >= 0:
            row.append("- (no gain)")
        else:
            row.append(f"**no**: {', '.join(lost)}" if lost else "yes")
        cells.append(row)
    return header, cells


def cross_judge_note(data: Any) -> str:
    goal = "negative" if data.task == "improve" else "positive"
    objective = data.config.get("objective")
    pre = (f"The loss above is the objective J of `{objective}` (weighted relative change of each term against the "
           "user prompt on the same seed; 0 is the user prompt; docs/judges.md). ") if objective else ""
    return (pre + "Cross-judge evaluation: mean over prompts of the paired change (answer - user prompt) of each "
            f"judge's loss on the report seeds ({goal} is a gain for {data.task}; the checker's loss is 1 - all "
            "correct, so -0.25 means 25 points more fully faithful images). (eval): a judge the search never saw. "
            "'Gain carries over: no' names the evaluators whose loss did not move with the optimized one: a search "
            "that games its judge. Feasible: answers whose objective constraints hold on the report seeds.")
