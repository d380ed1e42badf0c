#!/usr/bin/env bash
# The registered evaluation of mf with 2-step previews against random search (docs/evaluation_protocol.md,
# 2026-12-06; second evaluation pool, prompt seed 1005), exactly as registered: run it from a checkout of the
# registering commit (the commit that added this file) and write into this one:
#   git worktree add ../registered_1005 <registering commit> && \
#   (cd ../registered_1005 && PYTHONPATH=src PY=$PWD/../main/.venv/bin/python \
#       OUT=$OLDPWD/docs/world_bench/registered_1005 bash benchmarks/registered_1005.sh)
# Resumable: each lane appends one record per finished search and skips finished ones on a rerun. Two lanes, one
# per root seed and task group (every job depends only on its prompt, method, budget and root), each one process
# writing its own folder; the summary reads all of a task's folders.
#
#   bash benchmarks/registered_1005.sh            # both lanes in the background, logs in runs/registered_1005/
#   bash benchmarks/registered_1005.sh summary    # the tables from whatever records exist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/world_bench/registered_1005}
COMMON=(--pool eval2 --prompt-seed 1005 --screen-seeds 9000,9001 --report-seeds 9002-9009 --variants rerank
        --threads 1 --methods random,mf --mf-ladder steps:10%,full)
IMPROVE=(--tasks improve --n 48 --screen 5)
ATTACK=(--tasks attack --attack-kind hard --min-candidates 4000 --attack-min-rate 0.5 --n 16 --screen 16)
export HF_HUB_OFFLINE=1

lane() {  # lane ROOT: improve, then attack, at one root seed
  "$PY" benchmarks/robustness.py "${COMMON[@]}" "${IMPROVE[@]}" --roots "$1" --out "$OUT/improve_root$1"
  "$PY" benchmarks/robustness.py "${COMMON[@]}" "${ATTACK[@]}" --roots "$1" --out "$OUT/attack_root$1"
}

summary() {
  for t in improve attack; do
    mkdir -p "runs/registered_1005/summary_$t"
    cat "$OUT/${t}"_root*/records.jsonl 2>/dev/null > "runs/registered_1005/summary_$t/records.jsonl" || true
    "$PY" benchmarks/robustness.py --summary-only --out "runs/registered_1005/summary_$t" > /dev/null
    cp "runs/registered_1005/summary_$t/summary.md" "$OUT/summary_$t.md"
    echo "== $t: $OUT/summary_$t.md"
  done
}

if [ "${1:-}" = summary ]; then
  summary
  exit 0
fi
mkdir -p runs/registered_1005
lane 0 > runs/registered_1005/root0.log 2>&1 &
lane 1 > runs/registered_1005/root1.log 2>&1 &
echo "lanes started (pids $(jobs -p | tr '\n' ' ')); logs in runs/registered_1005/"
