"""Tables and curves of a benchmark folder: ``dpo-diff report DIR`` (no torch; matplotlib for the curves).

Writes ``DIR/report.md`` (Markdown tables), ``DIR/curves.png`` (best loss vs budget) and ``DIR/report.html`` (a
self-contained page: tables, curves and image grids, images inlined). Per method, over the prompts every listed
method finished (a paired comparison): judge loss on the held-out report seeds (mean ± std over prompts, 95% t
interval), its change against the user prompt, the share of prompts it improved, win rates against each other
method, search cost and wall time, and ground-truth faithfulness where the world's checker measured it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_diff.bench.results import RESULTS, load_bench
from dpo_diff.bench.stats import Summary, best_so_far_curve, summarize, win_rate

METHOD_ORDER = ("user", "promptist", "random", "epo", "gpo", "hybrid")


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
    skipped: str = ""  # unreadable lines of results.jsonl that were left out ("" when none)

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
        if all(r.get("faithfulness") for r in recs):
            best = [r["faithfulness"]["best"]["all_correct"] for r in recs]
            base = [r["faithfulness"]["user"]["all_correct"] for r in recs]
            row.faithful = summarize(best)
            row.faithful_delta = summarize([b - u for b, u in zip(best, base)])
        rows.append(row)
    wins = {a: {b: win_rate(per[a], per[b], sign) for b in chosen if b != a} for a in chosen}
    data = ReportData(out, task, chosen, prompts, len(all_prompts) - len(prompts), rows, wins, by_key,
                      manifest["config"])
    data.curves = curves(data)
    if results.skipped:
        data.skipped = f"{len(results.skipped)} unreadable line(s) of {RESULTS} skipped: {results.describe_skipped()}"
    return data


def curves(data: ReportData) -> dict[str, tuple[list[float], list[float]]]:
    """Mean over prompts of the best search-seed loss found by each cost (a flat line for the baselines)."""
    budget = float(data.config.get("budget", 0)) or 1.0
    grid = [budget * i / 100 for i in range(101)]
    out = {}
    for m in data.methods:
        rows = []
        for p in data.prompts:
            r = data.records[(p, m)]
            start = _mean(r["user_search_losses"])
            if r["history"]:
                rows.append(best_so_far_curve(r["history"], start, grid, data.sign))
            else:  # a baseline (or a space with nothing to search): its prompt's loss at every budget
                rows.append([_mean(r["search_losses"])] * len(grid))
        out[m] = (grid, [sum(col) / len(col) for col in zip(*rows)])
    return out


def plot_curves(data: ReportData, path: Path) -> Path | None:
    """Save the loss-vs-budget figure; ``None`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for m in data.methods:
        x, y = data.curves[m]
        style = "--" if not data.records[(data.prompts[0], m)]["history"] else "-"
        ax.plot(x, y, style, label=m)
    ax.set_xlabel("budget spent (full generations)")
    ax.set_ylabel("best judge loss, search seeds")
    goal = "lower is better" if data.task == "improve" else "higher is better"
    ax.set_title(f"{data.task}: best loss found vs budget ({len(data.prompts)} prompts, {goal})", fontsize=9)
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
    if faith:
        header += ["faithful", "Δ faithful"]
    cells = []
    for r in data.rows:
        row = [r.method, r.loss.fmt(), r.loss.fmt_ci(), _f(r.delta.mean, signed=True), r.delta.fmt_ci(),
               f"{r.improved:.0%}", _f(r.cost, 1), _f(r.seconds, 1)]
        if faith:
            row += [f"{r.faithful.mean:.1%}" if r.faithful else "-",
                    f"{r.faithful_delta.mean * 100:+.1f} pt" if r.faithful_delta else "-"]
        cells.append(row)
    return header, cells


def win_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    header = ["row beats column", *data.methods]
    cells = [[a, *("·" if a == b else f"{data.wins[a][b]:.0%}" for b in data.methods)] for a in data.methods]
    return header, cells


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
    ]
    if data.skipped:
        text += ["", f"Warning: {data.skipped}."]
    return "\n".join(text) + "\n"


def write_report(out: str | os.PathLike[str], *, methods: list[str] | None = None,
                 grid_prompts: int = 12) -> dict[str, Path]:
    """Write report.md, curves.png and report.html into ``out``; returns their paths."""
    from dpo_diff.bench.html import render_html
    from dpo_diff.space import atomic_write_text

    data = analyse(out, methods)
    paths = {"markdown": data.out / "report.md"}
    atomic_write_text(paths["markdown"], markdown(data))
    png = plot_curves(data, data.out / "curves.png")
    if png is not None:
        paths["curves"] = png
    paths["html"] = data.out / "report.html"
    atomic_write_text(paths["html"], render_html(data, markdown_tables=(table_rows(data), win_table(data)),
                                                 curves_png=png, grid_prompts=grid_prompts))
    return paths
