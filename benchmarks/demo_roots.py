"""Does the demo's claim hold, or was it a lucky draw? ``dpo-diff demo`` for several root seeds, with one torch
thread and with the machine's default, each in a fresh process; prints one row per run and how many hold.

A run *holds* when the judge and the ground truth agree on the task's direction: improve lowers the report loss and
raises faithfulness; attack raises the loss and lowers faithfulness.

    python benchmarks/demo_roots.py --roots 0-4 --out runs/demo_roots          # ~10 demo runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def holds(row: dict) -> bool:
    sign = 1 if row["task"] == "improve" else -1
    judge = sign * (row["loss_after"] - row["loss_before"]) < 0
    truth = sign * (row["faithful_after"] - row["faithful_before"]) > 0
    return judge and truth


def run_one(root: int, threads: str, out: Path) -> list[dict]:
    folder = out / f"threads-{threads}" / f"root-{root}"
    done = folder / "demo.json"
    if not done.is_file():
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)
        if threads != "default":
            env["OMP_NUM_THREADS"] = threads
        cmd = [sys.executable, "-m", "dpo_diff.cli", "demo", "--seed", str(root), "--out", str(folder), "--quiet"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(done.read_text())


def main() -> None:
    from dpo_diff.seeding import parse_seeds

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--roots", default="0-4")
    p.add_argument("--threads", default="1,default", help="comma-separated: a number or 'default' (unset)")
    p.add_argument("--out", default="runs/demo_roots")
    args = p.parse_args()
    out = Path(args.out)
    lines = ["| threads | root | task | answer | loss before → after | faithful before → after | holds |",
             "|---|---|---|---|---|---|---|"]
    tally: dict[tuple[str, str], list[bool]] = {}
    answers: dict[tuple[str, int], dict[str, str]] = {}
    for threads in args.threads.split(","):
        for root in parse_seeds(args.roots):
            for row in run_one(root, threads, out):
                ok = holds(row)
                tally.setdefault((threads, row["task"]), []).append(ok)
                answer = row["best_prompt"] + (f" | neg: {row['best_negative_prompt']}"
                                               if row["best_negative_prompt"] else "")
                answers.setdefault((row["task"], root), {})[threads] = answer
                lines.append(f"| {threads} | {root} | {row['task']} | {answer} | {row['loss_before']:.4f} → "
                             f"{row['loss_after']:.4f} | {row['faithful_before']:.0%} → {row['faithful_after']:.0%} "
                             f"| {'yes' if ok else 'no'} |")
    lines.append("")
    for (threads, task), oks in sorted(tally.items()):
        lines.append(f"- {task}, threads {threads}: holds for {sum(oks)} of {len(oks)} root seeds")
    same = sum(len(set(v.values())) == 1 for v in answers.values() if len(v) > 1)
    multi = sum(len(v) > 1 for v in answers.values())
    if multi:
        lines.append(f"- same answer under every thread count: {same} of {multi} (task, root) pairs")
    text = "\n".join(lines)
    print(text)
    (out / "summary.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
