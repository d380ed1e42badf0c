#!/usr/bin/env bash
# A rehearsal of the lent GPU machine on this one: a virtual environment with only torch and the device image's
# packages (no dpo-diff, no system site-packages), a fresh clone of this repository's committed tree, the device kit
# downloaded into it for this machine's Python (scripts/device_kit.sh), and `scripts/gpu_suite.sh --dry` run from the
# clone with that environment, so that the suite installs the kit the way it does on the device. Fails unless every
# step of the dry run succeeds.
#
#   bash scripts/simulate_device.sh [FOLDER]     # FOLDER: where to build it (default: a new temporary folder)
#
# The image's list (docs/gpu_suite.md, "The device image"): Python 3.12, torch 2.11, transformers 5.17, accelerate,
# safetensors, huggingface_hub, numpy, pillow, tqdm, filelock, scipy, matplotlib, pyarrow, pyyaml, pytest, hypothesis,
# sentence-transformers. Here: this machine's Python and the CPU torch build setup.sh installs (TORCH_VERSION,
# TORCH_INDEX_URL), transformers at the image's 5.17.0, the others at what the index resolves. Needs an index.
set -euo pipefail
unset PYTHONPATH PYTHONHOME  # the device's interpreter sees only its own packages (and what the suite adds)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIM=${1:-$(mktemp -d "${TMPDIR:-/tmp}/dpo_diff_device.XXXXXX")}
PYTHON=${PYTHON:-python3}
IMAGE_PACKAGES=(transformers==5.17.0 accelerate safetensors huggingface_hub numpy pillow tqdm filelock scipy
                matplotlib pyarrow pyyaml pytest hypothesis sentence-transformers)
mkdir -p "$SIM"
echo "== device image rehearsal in $SIM"
if [ ! -x "$SIM/venv/bin/python" ]; then
  "$PYTHON" -m venv "$SIM/venv"  # no --system-site-packages: only what is installed below
fi
VPY="$SIM/venv/bin/python"
if ! "$VPY" -c "import torch, transformers, sentence_transformers" 2>/dev/null; then
  "$VPY" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION:-2.13.0}"
  "$VPY" -m pip install -q "${IMAGE_PACKAGES[@]}"
fi
# Today's typer (a transformers dependency) pulls pydantic in; the image has none: take it out again.
"$VPY" -m pip uninstall -q -y pydantic pydantic-core 2>/dev/null || true
# The rehearsal is only one if the image lacks what the kit brings (and dpo-diff itself).
"$VPY" - <<'EOF'
import importlib.util
import sys

present = [m for m in ("dpo_diff", "diffusers", "pydantic", "optuna") if importlib.util.find_spec(m)]
if present:
    sys.exit(f"the simulated image already has {present}: not a rehearsal of the device")
EOF
rm -rf "$SIM/repo"
git clone -q "$ROOT" "$SIM/repo"  # the committed tree, as a fresh checkout has it
cd "$SIM/repo"
PYVER=$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PIP="$VPY -m pip" PYVER="$PYVER" bash scripts/device_kit.sh
rm -rf "$SIM/work" "$SIM/results"
PYTHON="$VPY" DRY=1 bash scripts/gpu_suite.sh --work "$SIM/work" --results "$SIM/results" --deadline 1500
echo "== the dry suite passed on the simulated device image ($SIM)"
