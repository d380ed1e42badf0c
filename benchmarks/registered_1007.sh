#!/usr/bin/env bash
# The registered evaluation of judge selection (docs/evaluation_protocol.md, 2026-12-07; second evaluation pool, prompt
# seed 1007; issue "Judges that see what the checker sees"), exactly as registered: the improve default (greedy over
# the hybrid space, CLIP judge only) against the same search with the second CLIP judge selecting by the agreement
# rule (`+select=judge_b`: `--select-judge clip:world:judge_b`). Run it from a checkout of the registering commit (the
# commit that added this file) and write into this one:
#   git worktree add ../registered_1007 <registering commit> && \
#   (cd ../registered_1007 && PYTHONPATH=src PY=$PWD/../main/.venv/bin/python \
#       OUT=$OLDPWD/docs/world_bench/registered_1007 bash benchmarks/registered_1007.sh)
# Resumable: each lane appends one record per finished search and skips finished ones on a rerun (screening verdicts
# are kept beside the records). Two lanes, one per root seed, each one process writing its own folder; the summary
# reads both.
#
#   bash benchmarks/registered_1007.sh            # both lanes in the background, logs in runs/registered_1007/
#   bash benchmarks/registered_1007.sh summary    # the tables from whatever records exist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/world_bench/registered_1007}
ARGS=(--pool eval2 --prompt-seed 1007 --screen-seeds 9000,9001 --report-seeds 9018-9025 --variants rerank
      --threads 1 --tasks improve --n 64 --screen 5 --methods greedy+both,greedy+both+select=judge_b)
PAIR="greedy+both+select=judge_b/rerank:greedy+both/rerank"
export HF_HUB_OFFLINE=1

if [ "${1:-}" = summary ]; then
  mkdir -p runs/registered_1007/summary
  cat "$OUT"/improve_root*/records.jsonl 2>/dev/null > runs/registered_1007/summary/records.jsonl || true
  "$PY" benchmarks/robustness.py --summary-only --pairs "$PAIR" --out runs/registered_1007/summary > /dev/null
  cp runs/registered_1007/summary/summary.md "$OUT/summary_improve.md"
  echo "== improve: $OUT/summary_improve.md"
  exit 0
fi
mkdir -p runs/registered_1007
for root in 0 1; do
  "$PY" benchmarks/robustness.py "${ARGS[@]}" --roots "$root" --out "$OUT/improve_root$root" \
      > "runs/registered_1007/root$root.log" 2>&1 &
done
echo "lanes started (pids $(jobs -p | tr '\n' ' ')); logs in runs/registered_1007/"
