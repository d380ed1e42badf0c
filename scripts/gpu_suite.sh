#!/usr/bin/env bash
# The GPU suite in one command: pytest -m gpu, the shortcut-memory and throughput benchmarks (SD v1.x at 512 px,
# random weights, fp16 and bf16) and one `dpo-diff optimize --method hybrid`, then one summary table against the
# targets, written to docs/gpu.md. About 6-8 minutes on one GPU.
#   bash scripts/gpu_suite.sh            # on a CUDA machine
#   bash scripts/gpu_suite.sh --dry      # (or DRY=1) the same steps on the CPU, tiny sizes, a couple of minutes
#   bash scripts/gpu_suite.sh --help     # options (--dtypes, --out, --deadline, --plan, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" scripts/gpu_suite.py "$@"
