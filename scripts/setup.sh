#!/usr/bin/env bash
# One-shot setup on a fresh machine: a virtual environment in .venv with dpo-diff and its test tools.
# The CPU build of torch is installed first: an open-ended torch requirement would otherwise pull a multi-GB
# CUDA build. On a GPU machine, install the torch build you want into .venv first; it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[lexicon,report,prompts,ray,ui,dev]"
echo "dpo-diff is installed in .venv ($(.venv/bin/python -c 'import dpo_diff; print(dpo_diff.__version__)'))"
