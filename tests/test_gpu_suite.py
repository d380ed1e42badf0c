"""scripts/gpu_suite.sh: argument handling, the planned commands, the summary table (fast); the dry run (slow)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite(load_script):
    return load_script("scripts/gpu_suite.py")


def test_arguments(suite):
    gpu = suite.parse_args([], environ={})
    assert (gpu.dry, gpu.device, gpu.dtypes) == (False, "cuda", ["fp16", "bf16"])
    dry = suite.parse_args(["--dry"], environ={})
    assert (dry.dry, dry.device, dry.dtypes) == (True, "cpu", ["fp32"])
    assert suite.parse_args([], environ={"DRY": "1"}).dry and not suite.parse_args([], environ={"DRY": "0"}).dry
    assert suite.parse_args(["--dry", "--dtypes", "bf16"], environ={}).dtypes == ["bf16"]
    for bad in (["--dtypes", "fp8"], ["--deadline", "0"], ["--bogus"]):
        with pytest.raises(SystemExit):
            suite.parse_args(bad, environ={})


def test_the_gpu_plan_covers_every_step_at_sd15_sizes(suite, tmp_path):
    steps = suite.plan(suite.parse_args([], environ={}), tmp_path)
    names = [s.name for s in steps]
    assert names == ["pytest -m gpu", "shortcut_memory fp16", "eval_throughput fp16", "shortcut_memory bf16",
                     "eval_throughput bf16", "save random model", "optimize hybrid fp16", "optimize mf fp16",
                     "shortcut_memory sdxl", "shortcut_memory sd3", "shortcut_memory flux"]
    argv = {s.name: s.argv for s in steps}
    assert argv["pytest -m gpu"][-5:-3] == ["-m", "gpu"]
    assert {"tests/test_gpu.py", *suite.GPU_TEST_FILES} <= set(argv["pytest -m gpu"])  # every file with gpu tests
    assert argv["optimize mf fp16"][argv["optimize mf fp16"].index("--method") + 1] == "mf"
    for name in names[1:6]:
        assert "sd15" in argv[name] and "cuda" in argv[name]
    opt = argv["optimize hybrid fp16"]
    for flag, value in (("--method", "hybrid"), ("--budget", "40"), ("--steps", "50"), ("--device", "cuda")):
        assert opt[opt.index(flag) + 1] == value
    for arch in ("sdxl", "sd3", "flux"):
        mem = argv[f"shortcut_memory {arch}"]
        assert mem[mem.index("--arch") + 1] == arch and mem[mem.index("--size") + 1] == "full" and "bf16" in mem
        assert ("--grad-checkpointing" in mem) == (arch == "sdxl")
    assert suite.parse_args([], environ={}).deadline <= 8 * 60  # the whole suite is bounded by the deadline


def test_the_dry_plan_uses_the_tiny_model_on_the_cpu(suite, tmp_path):
    steps = suite.plan(suite.parse_args(["--dry"], environ={}), tmp_path)
    assert all("sd15" not in s.argv and "cuda" not in s.argv for s in steps)
    assert any("tiny" in s.argv for s in steps)


def test_summary_reads_the_results_and_judges_the_targets(suite, tmp_path):
    gib = 2**30
    (tmp_path / "gpu_tests.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"check": "gpo_iteration", "dtype": "fp16", "preset": "paper", "peak_bytes": 7 * gib},
        {"check": "gpo_iteration", "dtype": "fp16", "preset": "robust", "peak_bytes": 9 * gib},
        {"check": "oom_retry", "dtype": "fp16", "graph_bytes": 100, "left_bytes": 0, "ok": True},
        {"check": "fp16_overflow", "dtype": "fp16", "backoffs": 5, "final_scale": 2048.0, "ok": False},
    ]))
    (tmp_path / "memory_fp16.json").write_text(json.dumps({"rows": [
        {"mode": "shortcut", "steps": 25, "saved_bytes": 100, "seconds": 0.5, "peak_bytes": 6 * gib},
        {"mode": "shortcut", "steps": 50, "saved_bytes": 101, "seconds": 0.6, "peak_bytes": 6 * gib},
        {"mode": "shortcut", "steps": 100, "saved_bytes": 102, "seconds": 0.9, "peak_bytes": 6 * gib}]}))
    (tmp_path / "throughput_fp16.json").write_text(json.dumps({"ratio": 3.0, "hybrid_s": 15.0}))
    (tmp_path / "optimize").mkdir()
    (tmp_path / "optimize" / "result.json").write_text(json.dumps({"search_seconds": 18.0}))
    numbers = suite.collect(tmp_path, ["fp16", "bf16"])
    assert numbers["fp16"]["saved_ratio"] == pytest.approx(1.02) and numbers["bf16"]["batched_ratio"] is None
    steps = [suite.Step("pytest -m gpu", [], 1, status="ok", seconds=3.0)]
    table = suite.summary(numbers, steps, dry=False)
    row = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert "7.00 GB PASS" in row["GPO iteration peak, paper preset (pytest)"]
    assert "9.00 GB FAIL" in row["GPO iteration peak, robust preset (pytest)"]
    assert "3.00x FAIL" in row["batched / one-at-a-time throughput"]
    assert "15.0 s PASS" in row["hybrid, budget 40, one prompt (benchmark)"]
    assert "18.0 s PASS" in row["hybrid, budget 40, `dpo-diff optimize` search time"]
    assert "n/a" in row["batched / one-at-a-time throughput"]  # bf16 has no result
    oom = row["GPO out-of-memory retry starts with the failed graph freed (pytest)"]
    assert "| recovered PASS | - n/a | recovered |" in oom
    assert "failed FAIL" in row["fp16 GPO with gradient overflow backs off and recovers (pytest)"]
    assert "| pytest -m gpu | ok | 3.0 |" in table
    assert "PASS" not in suite.summary(numbers, steps, dry=True)  # a dry run judges no target


def test_the_shell_wrapper_prints_the_plan():
    out = subprocess.run(["bash", "scripts/gpu_suite.sh", "--plan", "--dry", "--work", "unused"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "optimize hybrid fp32" in out.stdout and "--arch tiny" in out.stdout


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    """The whole suite on the CPU with the tiny model (a few minutes)."""
    out = subprocess.run(["bash", "scripts/gpu_suite.sh", "--dry", "--work", str(tmp_path), "--deadline", "900"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "gpu.md").read_text()
    assert "batched / one-at-a-time throughput" in report and "| optimize hybrid fp32 | ok |" in report


def test_the_suite_runs_every_file_that_has_gpu_tests(suite):
    """A new @pytest.mark.gpu test in another file must be added to the suite, or it never runs anywhere."""
    tests = Path(__file__).parent
    marked = {f"tests/{f.name}" for f in tests.glob("test_*.py")
              if "\n@pytest.mark.gpu" in f.read_text() or "mark.gpu\n" in f.read_text()}
    assert marked == {"tests/test_gpu.py", *suite.GPU_TEST_FILES}
