#!/usr/bin/env bash
# COMPLETE (2026-12-06): every registered job's record is committed; `bash benchmarks/registered_1004.sh summary`
# remakes the tables of docs/world_bench.md from them. Running the lanes again only skips finished jobs.
#
# The registered evaluation of issue #19 (docs/evaluation_protocol.md, 2026-12-03), exactly as registered: the code
# is the registering commit's, 70bdb4d, so continue it from a checkout of that commit and write into this one:
#   git worktree add ../registered 70bdb4d && cp benchmarks/registered_1004.sh ../registered/benchmarks/
#   (cd ../registered && PYTHONPATH=src PY=$PWD/../main/.venv/bin/python OUT=$OLDPWD/docs/world_bench/registered_1004 \
#       bash benchmarks/registered_1004.sh)
# Resumable: each lane appends one record per finished search to its folder and skips finished ones on a rerun, so
# it can be stopped and continued across sessions. Two lanes (one per core), each one process writing its own
# folders: improve (budget 40, then budgets 20 and 80), attack (the same), then the summaries. A lane's curves may
# also run as one process per root seed (--roots 0 and --roots 1 into ${task}_curves_root0/_root1): every job
# depends only on its prompt, method, budget and root, and the summary reads every ${task}_curves* folder.
#
#   bash benchmarks/registered_1004.sh            # both lanes in the background, logs in runs/registered_1004/
#   bash benchmarks/registered_1004.sh summary    # the tables from whatever records exist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/world_bench/registered_1004}  # OUT=... writes elsewhere (e.g. from a checkout of the registering commit)
COMMON=(--pool eval --prompt-seed 1004 --screen-seeds 9000,9001 --report-seeds 9002-9009 --variants rerank
        --roots 0,1 --threads 1)
IMPROVE=(--tasks improve --n 48 --screen 5)
ATTACK=(--tasks attack --attack-kind hard --min-candidates 4000 --attack-min-rate 0.5 --n 16 --screen 16)
export HF_HUB_OFFLINE=1

lane() {  # lane TASK_ARGS_NAME FOLDER
  local -n task=$1
  "$PY" benchmarks/robustness.py "${COMMON[@]}" "${task[@]}" --methods random,epo,hybrid,mf,tpe --out "$OUT/$2"
  "$PY" benchmarks/robustness.py "${COMMON[@]}" "${task[@]}" --methods random,mf --budgets 20,80 \
    --out "$OUT/$2_curves"
}

summary() {  # both budget views over the budget-40 and the budget-curve records of a task
  for t in improve attack; do
    mkdir -p "runs/registered_1004/summary_$t"
    cat "$OUT/$t/records.jsonl" "$OUT/${t}_curves"*/records.jsonl 2>/dev/null \
      > "runs/registered_1004/summary_$t/records.jsonl" || true
    "$PY" benchmarks/robustness.py --summary-only --pairs mf/rerank:random/rerank@80 \
      --out "runs/registered_1004/summary_$t" > /dev/null
    cp "runs/registered_1004/summary_$t/summary.md" "$OUT/summary_$t.md"
    echo "== $t: $OUT/summary_$t.md"
  done
}

if [ "${1:-}" = summary ]; then
  summary
  exit 0
fi
mkdir -p runs/registered_1004
lane IMPROVE improve > runs/registered_1004/improve.log 2>&1 &
lane ATTACK attack > runs/registered_1004/attack.log 2>&1 &
echo "lanes started (pids $(jobs -p | tr '\n' ' ')); logs in runs/registered_1004/"
