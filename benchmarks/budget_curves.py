"""Budget curves from robustness records (``benchmarks/robustness.py --budgets ...``), in both budget views.

Per (task, method) and budget: Δ report loss and Δ faithfulness against the user prompt (mean ± std across root seeds
of the per-root mean over prompts, as the robustness summary), the cost charged (full-generation equivalents) and
the wall seconds measured (the search's phases summed, and the whole job with its report seeds), then the paired
comparison of each method against random search at each budget (the robustness summary's bootstrap intervals over
prompts, roots averaged first).

    python benchmarks/budget_curves.py docs/world_bench/curves_eval_1002.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # robustness.py, the records' one reader and tester

from robustness import _per_prompt, paired_advantage, paired_lines, read_records  # noqa: E402

METHOD_ORDER = ("random", "epo", "gpo", "hybrid")


def search_seconds(r: dict) -> float:
    """Wall seconds of the search itself: its phases (GPO gradients, exact evaluations, re-ranking) summed."""
    return sum(r.get("timings", {}).values())


ROWS = {  # row label -> value of one record (roots: per-root means over prompts)
    "Δ report loss": lambda r: r["best_report_loss"] - r["user_report_loss"],
    "Δ faithful (points)": lambda r: 100 * (r["best_faithful"] - r["user_faithful"]),
    "cost charged (generations)": lambda r: r["cost"],
    "search s (phases summed)": search_seconds,
    "job s (search + report seeds)": lambda r: r["seconds"],
}


def cell(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:+.{digits}f}" if values else "-"
    return f"{statistics.mean(values):+.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(records: list[dict], task: str) -> list[str]:
    """One Markdown table: a block of rows per measure, a row per method, a column per budget."""
    budgets = sorted({r["budget"] for r in records if r["task"] == task})
    methods = sorted({r["method"] for r in records if r["task"] == task},
                     key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    runs: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["task"] == task:
            runs[(r["method"], r["budget"])][r["root"]].append(r)
    lines = ["| method | " + " | ".join(f"budget {b:g}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for label, value in ROWS.items():
        digits = 3 if "loss" in label else 1
        lines.append(f"| **{label}** |" + " |" * len(budgets))
        for m in methods:
            cells = []
            for b in budgets:
                per_root = [statistics.mean(value(r) for r in rs) for rs in runs[(m, b)].values()]
                cells.append(cell(per_root, digits) if digits == 3 else cell(per_root, digits).lstrip("+"))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def versus_random(records: list[dict], task: str, method: str) -> list[str]:
    """``method`` against random search at each budget, paired over prompts (roots averaged first): mean advantage
    (positive: better), 95% bootstrap interval, better/tie/worse, for the judge loss and for faithfulness."""
    variants = {r["budget"]: r["variant"] for r in records if r["task"] == task}
    lines = [f"| budget | {method} − random: loss advantage [95% CI], better/tie/worse | faithful advantage (points) "
             "[95% CI], better/tie/worse |", "|---|---|---|"]
    fields = (("best_report_loss", 1.0, 4), ("best_faithful", 100.0, 1))
    pps = {f: _per_prompt(records, f) for f, _, _ in fields}
    for budget, variant in sorted(variants.items()):
        cells = []
        for field, scale, digits in fields:
            found = paired_advantage(pps[field], task, method, variant, field, scale)
            if found is None:
                cells.append("-")
                continue
            d, ci, _ = found
            cells.append(f"{d.mean():+.{digits}f} [{ci.low:+.{digits}f}, {ci.high:+.{digits}f}], "
                         f"{int((d > 0).sum())}/{int((d == 0).sum())}/{int((d < 0).sum())}")
        lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    return lines


def points(records: list[dict], task: str, method: str, value) -> dict[float, tuple[float, float, float]]:
    """budget -> (mean cost charged, mean search seconds, mean and std across roots of the per-root mean of
    ``value`` over prompts)."""
    runs: dict[float, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["task"] == task and r["method"] == method:
            runs[r["budget"]][r["root"]].append(r)
    out = {}
    for budget, by_root in sorted(runs.items()):
        per_root = [statistics.mean(value(r) for r in rs) for rs in by_root.values()]
        every = [r for rs in by_root.values() for r in rs]
        spread = statistics.stdev(per_root) if len(per_root) > 1 else 0.0
        out[budget] = (statistics.mean(r["cost"] for r in every), statistics.mean(search_seconds(r) for r in every),
                       statistics.mean(per_root), spread)
    return out


def plot(records: list[dict], task: str, path: Path) -> None:
    """Δ loss and Δ faithfulness against both budget views: the cost charged and the search's wall seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHOD_ORDER if any(r["method"] == m and r["task"] == task for r in records)]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), dpi=100, sharey="row")
    for row, label in enumerate(("Δ report loss", "Δ faithful (points)")):
        for col, xlabel in enumerate(("budget charged (full generations)", "search wall seconds (1 CPU thread)")):
            ax = axes[row][col]
            for i, m in enumerate(methods):
                pts = points(records, task, m, ROWS[label])
                xs = [p[col] for p in pts.values()]
                jitter = 1 + 0.02 * (i - 1.5)  # methods that tie exactly stay visible
                ax.errorbar([x * jitter for x in xs], [p[2] for p in pts.values()],
                            yerr=[p[3] for p in pts.values()], marker="o", capsize=3, label=m)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if col == 0:
                ax.set_xticks(sorted({r["budget"] for r in records if r["task"] == task}))
            else:
                ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
    axes[0][0].legend(fontsize=8)
    prompts = len({r["prompt"] for r in records if r["task"] == task})
    goal = "lower" if task == "improve" else "higher"
    fig.suptitle(f"{task} ({goal} loss is better): mean ± std across root seeds, {prompts} prompts\n"
                 f"left: cost charged; right: wall seconds measured", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", help="records.jsonl files of robustness runs with --budgets")
    p.add_argument("--plot", default=None, help="write TASK's figure to this PNG path ({task} is replaced)")
    args = p.parse_args()
    records = [r for path in args.records for r in read_records(Path(path))]
    for task in sorted({r["task"] for r in records}):
        prompts = len({r["prompt"] for r in records if r["task"] == task})
        print(f"### {task} ({prompts} prompts; mean ± std across root seeds of the per-root mean over prompts)\n")
        print("\n".join(table(records, task)) + "\n")
        print("\n".join(versus_random(records, task, "hybrid")) + "\n")
        if args.plot:
            plot(records, task, Path(args.plot.format(task=task)))
    print("\n".join(paired_lines(records)))


if __name__ == "__main__":
    main()
