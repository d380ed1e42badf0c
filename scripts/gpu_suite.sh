#!/usr/bin/env bash
# The GPU suite in one command (scripts/gpu_suite.py): the SD v1.x memory and throughput benchmarks, pytest -m gpu,
# the SDXL, SD 3.5 and FLUX peaks at 1024 px, and one `dpo-diff optimize` per search method, each step's row written
# to the results folder ($OUT where set) as it finishes; one summary table against the targets in docs/gpu.md.
# Under 8 minutes on one GPU by its plan (estimates: `--plan`).
#   bash scripts/gpu_suite.sh            # on a CUDA machine (refuses to run without one)
#   bash scripts/gpu_suite.sh --plan     # the steps and their estimated seconds
#   bash scripts/gpu_suite.sh --dry      # (or DRY=1) the same steps on the CPU, tiny sizes
#   bash scripts/gpu_suite.sh --help     # options (--dtypes, --out, --results, --deadline, ...)
#
# On a machine that cannot install from an index (the lent GPU machine): the wheels that scripts/device_kit.sh put
# in .whl/ (KIT_DIR) are installed with `pip install --no-index --no-deps --target` into a temporary folder, only
# those whose distribution the interpreter lacks, and that folder and src/ go on PYTHONPATH. Nothing is installed
# into the interpreter itself, and dpo-diff runs from src/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3 || command -v python); fi
fi
case " $* " in *" --plan "*|*" --help "*|*" -h "*) KIT_DIR=/nonexistent ;; esac  # they import nothing from the kit
# shellcheck source=scripts/device_env.sh
source scripts/device_env.sh
"$PY" scripts/gpu_suite.py "$@"
