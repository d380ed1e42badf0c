"""The device kit (issue 27): on the lent GPU machine, which reaches no index and lacks diffusers, pydantic and optuna,
``scripts/gpu_suite.sh`` installs the kit's wheels into a temporary folder and runs dpo-diff from ``src/``.

Fast: the installer picks only the wheels whose distribution the interpreter lacks and puts them and ``src/`` on
``PYTHONPATH``. Slow (needs an index and a few minutes): ``scripts/simulate_device.sh`` builds a virtual environment
with only torch and the image's packages, downloads the kit for this Python into a fresh clone and runs the dry
suite there; every step must succeed."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def fake_wheel(folder: Path, dist: str, module: str, body: str = "VALUE = 42\n") -> Path:
    """A minimal pure-Python wheel (what pip needs: the module, METADATA, WHEEL, RECORD)."""
    path = folder / f"{dist}-1.0-py3-none-any.whl"
    info = f"{dist}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}.py", body)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_the_suite_installs_only_the_missing_wheels_and_runs_dpo_diff_from_src(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    fake_wheel(kit, "dpo_kit_probe", "dpo_kit_probe")
    # a distribution the interpreter has: its wheel must be left alone (this one would shadow pytest if installed)
    fake_wheel(kit, "pytest", "pytest", body="raise ImportError('the kit shadowed the interpreter')\n")
    code = ("import json, os, dpo_kit_probe, pytest, dpo_diff; print(json.dumps([dpo_kit_probe.VALUE, "
            "dpo_kit_probe.__file__, dpo_diff.__file__, os.environ['PYTHONPATH']]))")
    script = f'PY={sys.executable}; KIT_DIR={kit}; source scripts/device_env.sh; "$PY" -c "{code}"'
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    value, probe, dpo, pythonpath = json.loads(out.stdout.strip().splitlines()[-1])
    assert value == 42 and Path(probe).parent.parent == tmp_path  # installed into a temporary folder
    assert Path(dpo).resolve() == (ROOT / "src" / "dpo_diff" / "__init__.py").resolve()
    assert pythonpath.split(":")[1] == str(ROOT / "src")
    assert "installing 1 wheel(s)" in out.stderr
    assert not any(tmp_path.glob("dpo_diff_kit.*")), "the temporary folder outlived the shell"


@pytest.mark.slow
def test_the_dry_suite_runs_on_the_simulated_device_image(tmp_path):
    sim = tmp_path / "sim"
    out = subprocess.run(["bash", "scripts/simulate_device.sh", str(sim)], cwd=ROOT, capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "wheels" in out.stdout and "MiB of 64 MiB" in out.stdout  # the kit printed its total against the limit
    rows = [json.loads(line) for line in (sim / "results" / "steps.jsonl").read_text().splitlines()]
    assert rows and all(r["status"] == "ok" for r in rows), rows
    assert {"preflight", "pytest -m gpu", "optimize hybrid fp32", "optimize tpe fp32"} <= {r["step"] for r in rows}
    assert "device kit: installing" in out.stderr + out.stdout
