"""Report a benchmark folder (from 'dpo-diff bench'): Markdown tables, loss-vs-budget and loss-vs-time curves and
an HTML page.

Writes DIR/report.md, DIR/curves.png (best loss vs cost), DIR/curves_time.png (best loss vs elapsed search seconds)
and DIR/report.html (self-contained: open it offline or mail it) and prints the Markdown. Needs no torch; the
curves need matplotlib (pip install 'dpo-diff[report]').
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="benchmark folder")
    p.add_argument("--methods", default=None, help="comma-separated subset to compare (default: all in the folder)")
    p.add_argument("--grid-prompts", type=int, default=12, help="prompts shown with images in the HTML (default 12)")


def run(args: argparse.Namespace) -> int:
    from dpo_diff.bench.report import write_report
    from dpo_diff.extras import available, install_command

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if args.grid_prompts < 0:
        raise ValueError(f"--grid-prompts must be >= 0, got {args.grid_prompts}")
    paths = write_report(args.dir, methods=methods, grid_prompts=args.grid_prompts)
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    if "curves" not in paths and not available("matplotlib"):  # the tables stand alone: warn, do not fail
        print(f"dpo-diff report: warning: no curves (curves.png, curves_time.png): they need matplotlib, which is "
              f"not installed: {install_command('matplotlib')}", file=sys.stderr)
    return 0
