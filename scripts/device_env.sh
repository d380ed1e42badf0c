# Sourced by scripts/gpu_suite.sh (bash): puts the device kit and src/ on PYTHONPATH for "$PY", run from the
# repository root. Every wheel in KIT_DIR (default .whl, filled by scripts/device_kit.sh) whose distribution "$PY"
# lacks is installed with `pip install --no-index --no-deps --target` into a temporary folder (KIT_SITE, removed on
# exit); wheels of distributions it has are left alone, so nothing shadows the image's own packages.
KIT_DIR=${KIT_DIR:-.whl}
KIT_SITE=""
if compgen -G "$KIT_DIR/*.whl" >/dev/null; then
  kit_missing=$("$PY" - "$KIT_DIR" <<'PYEOF'
import importlib.metadata as md
import pathlib
import sys

for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = wheel.name.split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
PYEOF
)
  if [ -n "$kit_missing" ]; then
    KIT_SITE=$(mktemp -d "${TMPDIR:-/tmp}/dpo_diff_kit.XXXXXX")
    trap 'rm -rf "$KIT_SITE"' EXIT
    echo "device kit: installing $(echo "$kit_missing" | wc -l) wheel(s) from $KIT_DIR into $KIT_SITE" >&2
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$KIT_SITE" $kit_missing
  fi
fi
export PYTHONPATH="${KIT_SITE:+$KIT_SITE:}$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
