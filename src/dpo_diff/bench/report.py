"""Tables and curves of a benchmark folder: ``dpo-diff report DIR`` (no torch; matplotlib for the curves).

Writes ``DIR/report.md`` (Markdown tables), ``DIR/curves.png`` (best loss vs budget), ``DIR/curves_time.png``
(best loss vs elapsed search seconds) and ``DIR/report.html`` (a self-contained page: tables, curves and image grids,
images inlined). Per method, over the prompts every listed method finished (a paired comparison): judge loss on the
held-out report seeds (mean ± std over prompts, 95% t interval), its change against the user prompt, the share of
prompts it improved, win rates against each other method, ground-truth faithfulness where the world's checker
measured it, and both budget views: the cost a search was charged (full-generation equivalents) and the wall seconds
it took, in total and by phase (records of older versions carry no per-evaluation seconds; only the time view leaves
them out).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_diff.bench.cross_judge import cross_judge_note, cross_judge_table
from dpo_diff.bench.results import RESULTS, load_bench, open_failures
from dpo_diff.bench.stats import Summary, best_so_far_curve, summarize, win_rate

METHOD_ORDER = ("user", "promptist", "random", "epo", "gpo", "hybrid", "mf", "tpe", "greedy", "llm")


@dataclass
class MethodRow:
    method: str
    loss: Summary
    delta: Summary  # method - user, per prompt
    improved: float  # share of prompts better than the user prompt
    cost: float  # mean full-generation equivalents spent
    seconds: float  # mean wall time per job
    faithful: Summary | None = None  # all-correct rate of the method's images (report seeds)
    faithful_delta: Summary | None = None
    attribute_delta: Summary | None = None  # Δ attribute accuracy (share of the prompt's claims right) vs user
    gamed: int = 0  # prompts whose judge loss moved the task's way while the ground truth did not (room to move)
    changes: float = 0.0  # median number of words/terms the answers change


@dataclass
class ReportData:
    out: Path
    task: str
    methods: list[str]
    prompts: list[str]  # prompts every method finished (the compared set)
    incomplete: int  # prompts some method has not finished yet (left out)
    rows: list[MethodRow]
    wins: dict[str, dict[str, float]]
    records: dict[tuple[str, str], dict[str, Any]]
    config: dict[str, Any]
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    time_curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # x: elapsed seconds
    skipped: str = ""  # unreadable lines of results.jsonl that were left out ("" when none)
    failures: list[dict[str, Any]] = field(default_factory=list)  # jobs that failed and have no record since

    @property
    def sign(self) -> float:
        return 1.0 if self.task == "improve" else -1.0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def analyse(out: str | os.PathLike[str], methods: list[str] | None = None) -> ReportData:
    """Read ``out`` and compute every table of the report."""
    out = Path(out)
    manifest, results = load_bench(out)
    records = results.records
    task = manifest["config"]["task"]
    by_key = {(r["prompt"], r["method"]): r for r in records}
    present = {m for _, m in by_key}
    if methods:
        missing = [m for m in methods if m not in present]
        if missing:
            raise ValueError(f"no results for method(s) {missing} in {out}; it has {sorted(present)}")
    chosen = sorted(methods or present, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    all_prompts = list(dict.fromkeys(r["prompt"] for r in records))
    prompts = [p for p in all_prompts if all((p, m) in by_key for m in chosen)]
    if not prompts:
        raise ValueError(f"no prompt in {out} has results for every method {chosen} yet; wait for the benchmark or "
                         f"pass --methods with the finished ones")
    sign = 1.0 if task == "improve" else -1.0
    per = {m: [_mean(by_key[(p, m)]["report_losses"]) for p in prompts] for m in chosen}
    user = [_mean(by_key[(p, chosen[0])]["user_report_losses"]) for p in prompts]
    rows = []
    for m in chosen:
        recs = [by_key[(p, m)] for p in prompts]
        deltas = [a - u for a, u in zip(per[m], user)]
        row = MethodRow(m, summarize(per[m]), summarize(deltas),
                        _mean([1.0 if sign * d < 0 else 0.0 for d in deltas]),
                        _mean([r["cost"] for r in recs]), _mean([r["seconds"] for r in recs]))
        row.changes = statistics.median(len(r["best"].get("changes", [])) for r in recs)
        if all(r.get("faithfulness") for r in recs):
            ground_truth(row, recs, deltas, sign)
        rows.append(row)
    wins = {a: {b: win_rate(per[a], per[b], sign) for b in chosen if b != a} for a in chosen}
    data = ReportData(out, task, chosen, prompts, len(all_prompts) - len(prompts), rows, wins, by_key,
                      manifest["config"])
    data.failures = open_failures(out, records)
    data.curves = curves(data)
    data.time_curves = time_curves(data)
    if results.skipped:
        data.skipped = f"{len(results.skipped)} unreadable line(s) of {RESULTS} skipped: {results.describe_skipped()}"
    return data


def ground_truth(row: MethodRow, recs: list[dict[str, Any]], deltas: list[float], sign: float) -> None:
    """The checker's columns: all-correct, Δ all-correct, Δ attribute accuracy (records that have it) and the judge
    gains the ground truth did not follow (judge gaming: loss better for the task, faithfulness not, with room)."""
    best = [r["faithfulness"]["best"]["all_correct"] for r in recs]
    base = [r["faithfulness"]["user"]["all_correct"] for r in recs]
    row.faithful = summarize(best)
    row.faithful_delta = summarize([b - u for b, u in zip(best, base)])
    if all("attribute_accuracy" in r["faithfulness"]["best"] for r in recs):
        row.attribute_delta = summarize([r["faithfulness"]["best"]["attribute_accuracy"]
                                         - r["faithfulness"]["user"]["attribute_accuracy"] for r in recs])
    full = 1.0 if sign > 0 else 0.0  # no room: already fully faithful (improve) or fully broken (attack)
    row.gamed = sum(1 for d, b, u in zip(deltas, best, base) if sign * d < 0 and sign * (b - u) <= 0 and u != full)


def _mean_curve(data: ReportData, method: str, grid: list[float], key: str) -> list[float]:
    """Mean over prompts of the best search-seed loss found by each point of ``grid``, with ``key`` the record's
    ``[x, best loss]`` list (``history``: x in cost; ``time_history``: x in elapsed search seconds)."""
    rows = []
    for p in data.prompts:
        r = data.records[(p, method)]
        if r["history"]:
            rows.append(best_so_far_curve(r[key], _mean(r["user_search_losses"]), grid, data.sign))
        else:  # a baseline (or a space with nothing to search): its prompt's loss at every budget
            rows.append([_mean(r["search_losses"])] * len(grid))
    return [sum(col) / len(col) for col in zip(*rows)]


def curves(data: ReportData) -> dict[str, tuple[list[float], list[float]]]:
    """Mean over prompts of the best search-seed loss found by each cost (a flat line for the baselines)."""
    budget = float(data.config.get("budget", 0)) or 1.0
    grid = [budget * i / 100 for i in range(101)]
    return {m: (grid, _mean_curve(data, m, grid, "history")) for m in data.methods}


def _search_seconds(r: dict[str, Any]) -> float:
    return float(r.get("search_seconds") or (r["time_history"][-1][0] if r.get("time_history") else 0.0))


def untimed_methods(data: ReportData) -> list[str]:
    """Methods with a search record that has no per-evaluation seconds (written before they were recorded)."""
    return [m for m in data.methods
            if any(data.records[(p, m)]["history"] and not data.records[(p, m)].get("time_history")
                   for p in data.prompts)]


def time_curves(data: ReportData) -> dict[str, tuple[list[float], list[float]]]:
    """The wall-clock view of :func:`curves`: best loss by elapsed search seconds, up to the slowest search (a
    finished search stays at its answer). Empty when no search record has per-evaluation seconds."""
    untimed = set(untimed_methods(data))
    timed = [m for m in data.methods if m not in untimed]
    seconds = [_search_seconds(data.records[(p, m)]) for m in timed for p in data.prompts
               if data.records[(p, m)]["history"]]
    if not seconds:
        return {}
    horizon = max(seconds) or 1.0
    grid = [horizon * i / 100 for i in range(101)]
    return {m: (grid, _mean_curve(data, m, grid, "time_history")) for m in timed}


PHASES = ("gpo_gradient", "evaluation", "rerank")  # the search's wall seconds by phase (Evaluator.timings)


def budget_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Both budget views per method, means over the compared prompts: full-generation equivalents charged, and wall
    seconds measured (the search, its phases, the whole job); "-" where older records lack the seconds."""
    header = ["method", "cost (gen)", "search s", "s / gen", *(f"{ph} s" for ph in PHASES), "job s"]
    cells = []
    for m in data.methods:
        recs = [data.records[(p, m)] for p in data.prompts]
        cost = _mean([r["cost"] for r in recs])
        search = _mean([r["search_seconds"] for r in recs]) if all("search_seconds" in r for r in recs) else None
        timed = all("timings" in r for r in recs)
        phases = [_mean([r["timings"].get(ph, 0.0) for r in recs]) if timed else None for ph in PHASES]
        per_gen = search / cost if search is not None and cost > 0 else None
        cells.append([m, _f(cost, 1), _f(search, 1), _f(per_gen, 2), *(_f(x, 1) for x in phases),
                      _f(_mean([r["seconds"] for r in recs]), 1)])
    return header, cells


VIEWS = {  # view -> (ReportData field, x label, title)
    "budget": ("curves", "budget spent (full generations)", "best loss found vs budget"),
    "time": ("time_curves", "elapsed search time (s, this machine)", "best loss found vs wall-clock time"),
}


def plot_curves(data: ReportData, path: Path, view: str = "budget") -> Path | None:
    """Save the best-loss figure of one budget view (``budget`` or ``time``); ``None`` when matplotlib is missing
    or the view has no curve."""
    field_name, xlabel, title = VIEWS[view]
    lines = getattr(data, field_name)
    if not lines:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for m, (x, y) in lines.items():
        style = "--" if not data.records[(data.prompts[0], m)]["history"] else "-"
        ax.plot(x, y, style, label=m)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best judge loss, search seeds")
    goal = "lower is better" if data.task == "improve" else "higher is better"
    ax.set_title(f"{data.task}: {title} ({len(data.prompts)} prompts, {goal})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _f(x: float, digits: int = 4, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def table_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main table (shared by Markdown and HTML)."""
    faith = any(r.faithful is not None for r in data.rows)
    header = ["method", "loss (mean ± std)", "95% CI", "Δ vs user", "Δ 95% CI", "improved", "cost", "s / job"]
    header += ["changes (median)"]
    if faith:
        header += ["faithful", "Δ faithful", "Δ attribute accuracy", "judge gains without ground truth"]
    cells = []
    for r in data.rows:
        skipped = skipped_stage_count(data, r.method)
        name = f"{r.method} (GPO skipped on {skipped}/{len(data.prompts)})" if skipped else r.method
        row = [name, r.loss.fmt(), r.loss.fmt_ci(), _f(r.delta.mean, signed=True), r.delta.fmt_ci(),
               f"{r.improved:.0%}", _f(r.cost, 1), _f(r.seconds, 1), f"{r.changes:g}"]
        if faith:
            row += [f"{r.faithful.mean:.1%}" if r.faithful else "-",
                    f"{r.faithful_delta.mean * 100:+.1f} pt" if r.faithful_delta else "-",
                    f"{r.attribute_delta.mean * 100:+.1f} pt" if r.attribute_delta else "-",
                    f"{r.gamed}/{len(data.prompts)}" if r.faithful else "-"]
        cells.append(row)
    return header, cells


def skipped_stage_count(data: ReportData, method: str) -> int:
    """On how many compared prompts ``method``'s GPO stage was skipped (its budget share could not pay for it)."""
    return sum(any(n.startswith("GPO skipped") for n in data.records[(p, method)].get("search_notes", []))
               for p in data.prompts)


def stage_note(data: ReportData) -> str:
    """Why a row says "GPO skipped" (empty when no row does)."""
    if not any(skipped_stage_count(data, m) for m in data.methods):
        return ""
    return ("GPO skipped: GPO's share of the budget could not pay for its minimum number of iterations, so that "
            "method ran without its gradient stage (GPO as random search, hybrid as EPO from a uniform population) "
            "and its row measures that. Raise --budget or use fewer --seeds so that every listed method runs.")


SELECTION_NOTE = ("Selection judges (--select-judge): an answer replaces the user prompt only if every selection "
                  "judge prefers it on the validation seeds. Judged runs: runs whose re-ranking ran with selection "
                  "judges. User kept: runs where no re-ranked candidate passed every judge. Vetoes: re-ranked "
                  "candidates the judge did not prefer to the user prompt, of all re-ranked ones (the user prompt "
                  "itself, when the search scored it among its best, not counted). Judge scorings: images x judges "
                  "per judged run; baseline gen.: the user prompt's generations on the validation seeds per judged "
                  "run, not charged to the budget (the cost column counts neither).")


def selection_table(data: ReportData) -> tuple[list[str], list[list[str]]] | None:
    """Per method, the selection judges' verdicts over the compared prompts (``None`` when no record has them)."""
    verdicts = {m: [data.records[(p, m)]["selection"] for p in data.prompts if "selection" in data.records[(p, m)]]
                for m in data.methods}
    if not any(verdicts.values()):
        return None
    judges = list(dict.fromkeys(j for sels in verdicts.values() for sel in sels for j in sel["select_judges"]))
    header = ["method", "judged runs", "user kept", *(f"vetoes: {j}" for j in judges), "judge scorings / run",
              "baseline gen. / run"]
    cells = []
    for m, sels in verdicts.items():
        if not sels:
            continue
        ranked = sum(sel["compared"] for sel in sels)
        cells.append([m, f"{len(sels)}/{len(data.prompts)}", f"{sum(bool(sel['kept_user']) for sel in sels)}",
                      *(f"{sum(sel['vetoes'].get(j, 0) for sel in sels)}/{ranked}" for j in judges),
                      f"{_mean([sel['select_calls'] for sel in sels]):g}",
                      f"{_mean([sel['baseline_generations'] for sel in sels]):g}"])
    return header, cells


def failed_jobs(data: ReportData) -> list[str]:
    """One line per job that failed and has not succeeded since (``DIR/failures.jsonl``)."""
    return [f"{f['method']} on {f['prompt']!r}: {f['error']}" for f in data.failures]


def win_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    header = ["row beats column", *data.methods]
    cells = [[a, *("·" if a == b else f"{data.wins[a][b]:.0%}" for b in data.methods)] for a in data.methods]
    return header, cells


def budget_note(data: ReportData) -> str:
    """What the budget table and the two curve figures measure (and what the time view had to leave out)."""
    text = ("Cost: full-generation equivalents charged (the budget all methods share). Search s: wall seconds from "
            "the start of the search (the user prompt's baseline on the search seeds included; a resumed run counts "
            "its interrupted parts), by phase: gpo_gradient (GPO's forward and backward passes), evaluation (exact "
            "scoring of candidates), rerank (re-scoring the best on validation seeds). s / gen: search seconds per "
            "charged generation. Job s: the whole job, report seeds included. Seconds are this machine's and vary "
            "with its load. curves.png: best loss vs cost; curves_time.png: best loss vs elapsed search seconds.")
    untimed = untimed_methods(data)
    if not data.time_curves:
        text += " No time curve: these records carry no per-evaluation seconds (written by an older version)."
    elif untimed:
        text += (f" Left out of the time curve (records without per-evaluation seconds, from an older version): "
                 f"{', '.join(untimed)}.")
    return text


def markdown(data: ReportData) -> str:
    def md(header: list[str], cells: list[list[str]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)

    cfg = data.config
    goal = "lower" if data.task == "improve" else "higher"
    seeds = ", ".join(map(str, cfg["report_seeds"]))
    text = [
        f"**Task: {data.task}** ({goal} judge loss is better). {len(data.prompts)} prompts"
        + (f" ({data.incomplete} more not finished by every method, left out)" if data.incomplete else "")
        + f"; budget {cfg['budget']:g} full generations per prompt and method; search seeds "
        f"{', '.join(map(str, cfg['seeds']))}; report seeds {seeds}; {cfg['steps']} steps, guidance "
        f"{cfg['guidance']:g}.",
        "",
        md(*table_rows(data)),
        "",
        "Loss: spherical CLIP loss of the method's prompt to the user prompt on the held-out report seeds, averaged "
        "over seeds per prompt, then mean ± std and 95% t interval over prompts. Δ: paired difference to the user "
        "prompt. Improved: share of prompts where the method beat the user prompt. Cost: full-generation "
        "equivalents the search spent."
        + (" Faithful: share of report images the ground-truth checker finds fully correct for the user prompt."
           if any(r.faithful for r in data.rows) else ""),
        "",
        "Win rate (share of prompts where the row's loss is better than the column's; ties count half):",
        "",
        md(*win_table(data)),
        "",
        "Both budget views: what each search was charged and what it took on the clock (means over prompts):",
        "",
        md(*budget_table(data)),
        "",
        budget_note(data),
    ]
    cross = cross_judge_table(data)
    if cross is not None:
        text += ["", cross_judge_note(data), "", md(*cross)]
    selection = selection_table(data)
    if selection is not None:
        text += ["", SELECTION_NOTE, "", md(*selection)]
    if stage_note(data):
        text += ["", stage_note(data)]
    if data.failures:
        text += ["", f"Failed jobs ({len(data.failures)}; rerun the bench to retry them):", "",
                 *(f"- {line}" for line in failed_jobs(data))]
    if data.skipped:
        text += ["", f"Warning: {data.skipped}."]
    return "\n".join(text) + "\n"


def write_report(out: str | os.PathLike[str], *, methods: list[str] | None = None,
                 grid_prompts: int = 12) -> dict[str, Path]:
    """Write report.md, curves.png, curves_time.png (when the records have seconds) and report.html into ``out``;
    returns their paths."""
    from dpo_diff.bench.html import render_html
    from dpo_diff.space import atomic_write_text

    data = analyse(out, methods)
    paths = {"markdown": data.out / "report.md"}
    atomic_write_text(paths["markdown"], markdown(data))
    png = plot_curves(data, data.out / "curves.png")
    if png is not None:
        paths["curves"] = png
    time_png = plot_curves(data, data.out / "curves_time.png", view="time")
    if time_png is not None:
        paths["time_curves"] = time_png
    paths["html"] = data.out / "report.html"
    atomic_write_text(paths["html"], render_html(data, markdown_tables=(table_rows(data), win_table(data)),
                                                 curves_png=png, grid_prompts=grid_prompts,
                                                 budget_views=(budget_table(data), budget_note(data)),
                                                 time_png=time_png, cross_judge=cross_judge_table(data)))
    return paths
