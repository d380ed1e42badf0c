#!/usr/bin/env bash
# The device kit: wheels of what the lent GPU machine's image lacks, downloaded here (it reaches no index) into the
# ignored .whl/ folder, which travels with the working tree; scripts/gpu_suite.sh installs them there with
# `pip install --no-index --no-deps --target` into a temporary folder and puts it and src/ on PYTHONPATH.
#
# The image (docs/gpu_suite.md, "The device image") has Python 3.12, torch, transformers, accelerate, safetensors,
# huggingface_hub, numpy, pillow, tqdm, filelock, scipy, pyyaml, pytest, hypothesis and sentence-transformers, but
# not diffusers, pydantic or optuna (nor their own dependencies below). scripts/gpu_suite.sh installs only the
# wheels whose distribution the interpreter lacks, so listing one the image has costs carry space, nothing else.
# Versions are pinned to what this checkout's pyproject.toml resolved to when the kit was made; change them together
# with the environment you test against.
#
#   bash scripts/device_kit.sh                       # wheels for the device (CPython 3.12, manylinux x86_64)
#   PYVER=3.11 KIT_DIR=/tmp/kit bash scripts/device_kit.sh   # the same set for another Python (the simulation)
#
# It prints each wheel and its size, then the total with the repository's tracked files against the 64 MiB that
# may travel with the tree, and fails above it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
KIT_DIR=${KIT_DIR:-.whl}
PIP=${PIP:-}
if [ -z "$PIP" ]; then
  if [ -x .venv/bin/python ]; then PIP=".venv/bin/python -m pip"; else PIP="python3 -m pip"; fi
fi
LIMIT=$((64 * 1024 * 1024))
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

# name==version  why it is needed (every line: a distribution the image lacks)
KIT="
diffusers==0.42.1           the diffusion backbones (dpo_diff.backends)
pydantic==2.14.4            input-file schemas (dpo_diff.schemas, imported by the CLI)
pydantic-core==2.50.5       pydantic's compiled core
annotated-types==0.8.0      pydantic dependency
typing-inspection==0.4.5    pydantic dependency
optuna==5.1.0               the model-based search (tpe), run by the suite's optimize steps
alembic==1.20.1             optuna dependency
sqlalchemy==2.1.9           optuna dependency (compiled)
mako==1.4.3                 alembic dependency
markupsafe==3.0.4           mako dependency (compiled)
colorlog==6.12.0            optuna dependency
importlib-metadata==10.2.0  diffusers dependency
zipp==4.1.2                 importlib-metadata dependency
requests==2.34.2            diffusers checks it at import (huggingface_hub 1.x no longer brings it)
urllib3==2.8.0              requests dependency
charset-normalizer==3.5.3   requests dependency
idna==3.21                  requests dependency
certifi==2026.10.19.post1   requests dependency
"

mkdir -p "$KIT_DIR"
specs=$(echo "$KIT" | awk 'NF {print $1}')
# shellcheck disable=SC2086
$PIP download -q --dest "$KIT_DIR" --only-binary=:all: --no-deps --python-version "$PYVER" \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any $specs

echo "device kit in $KIT_DIR (Python $PYVER, manylinux x86_64):"
total=0
while read -r spec why; do
  [ -n "$spec" ] || continue
  name=${spec%%==*}
  version=${spec#*==}
  norm=$(echo "$name" | tr 'A-Z-' 'a-z_')
  file=$(find "$KIT_DIR" -maxdepth 1 -iname "${norm}-${version}-*.whl" | head -1)
  if [ -z "$file" ]; then
    echo "missing wheel for $spec" >&2
    exit 1
  fi
  size=$(stat -c %s "$file")
  total=$((total + size))
  printf '  %-24s %-12s %8s MiB  %s\n' "$name" "$version" "$(mib "$size")" "$why"
done <<< "$KIT"
repo=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
all=$((total + repo))
echo "wheels $(mib "$total") MiB + tracked files $(mib "$repo") MiB = $(mib "$all") MiB of $((LIMIT / 1048576)) MiB"
if [ "$all" -gt "$LIMIT" ]; then
  echo "the kit does not fit the carry limit with the repository" >&2
  exit 1
fi
