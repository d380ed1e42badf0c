#!/usr/bin/env bash
# The registered evaluation of the sparse-first searches against uniform random search (docs/evaluation_protocol.md,
# 2026-12-07; second evaluation pool, prompt seed 1006; issue "Search where the good answers are"), exactly as
# registered: run it from a checkout of the
# registering commit (the commit that added this file) and write into this one:
#   git worktree add ../registered_1006 <registering commit> && \
#   (cd ../registered_1006 && PYTHONPATH=src PY=$PWD/../main/.venv/bin/python \
#       OUT=$OLDPWD/docs/world_bench/registered_1006 bash benchmarks/registered_1006.sh)
# Resumable: each lane appends one record per finished search and skips finished ones on a rerun. Two lanes, one per
# root seed (every job depends only on its prompt, method, budget and root), each one process writing its own
# folders; the summary reads all of a task's folders.
#
#   bash benchmarks/registered_1006.sh            # both lanes in the background, logs in runs/registered_1006/
#   bash benchmarks/registered_1006.sh summary    # the tables from whatever records exist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/world_bench/registered_1006}
COMMON=(--pool eval2 --prompt-seed 1006 --screen-seeds 9000,9001 --report-seeds 9010-9017 --variants rerank
        --threads 1)
IMPROVE=(--tasks improve --n 64 --screen 5 --methods random,greedy,random+sparse,greedy+both)
ATTACK=(--tasks attack --attack-kind hard --min-candidates 4000 --attack-min-rate 0.5 --n 24 --screen 16
        --methods random,greedy,random+sparse)
export HF_HUB_OFFLINE=1

lane() {  # lane ROOT: improve, then attack, at one root seed
  "$PY" benchmarks/robustness.py "${COMMON[@]}" "${IMPROVE[@]}" --roots "$1" --out "$OUT/improve_root$1"
  "$PY" benchmarks/robustness.py "${COMMON[@]}" "${ATTACK[@]}" --roots "$1" --out "$OUT/attack_root$1"
}

summary() {
  for t in improve attack; do
    mkdir -p "runs/registered_1006/summary_$t"
    cat "$OUT/${t}"_root*/records.jsonl 2>/dev/null > "runs/registered_1006/summary_$t/records.jsonl" || true
    "$PY" benchmarks/robustness.py --summary-only --out "runs/registered_1006/summary_$t" > /dev/null
    cp "runs/registered_1006/summary_$t/summary.md" "$OUT/summary_$t.md"
    echo "== $t: $OUT/summary_$t.md"
  done
}

if [ "${1:-}" = summary ]; then
  summary
  exit 0
fi
mkdir -p runs/registered_1006
lane 0 > runs/registered_1006/root0.log 2>&1 &
lane 1 > runs/registered_1006/root1.log 2>&1 &
echo "lanes started (pids $(jobs -p | tr '\n' ' ')); logs in runs/registered_1006/"
