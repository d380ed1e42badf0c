"""scripts/gpu_suite.sh: argument handling, the planned commands, the summary table (fast); the dry run (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite(load_script):
    return load_script("scripts/gpu_suite.py")


def test_arguments(suite):
    gpu = suite.parse_args([], environ={})
    assert (gpu.dry, gpu.device, gpu.dtypes) == (False, "cuda", ["fp16"])
    dry = suite.parse_args(["--dry"], environ={})
    assert (dry.dry, dry.device, dry.dtypes) == (True, "cpu", ["fp32"])
    assert suite.parse_args([], environ={"DRY": "1"}).dry and not suite.parse_args([], environ={"DRY": "0"}).dry
    assert suite.parse_args(["--dry", "--dtypes", "bf16"], environ={}).dtypes == ["bf16"]
    for bad in (["--dtypes", "fp8"], ["--deadline", "0"], ["--bogus"]):
        with pytest.raises(SystemExit):
            suite.parse_args(bad, environ={})


def test_the_gpu_plan_runs_the_big_backbones_before_the_cheap_steps(suite, tmp_path):
    steps = suite.plan(suite.parse_args(["--dtypes", "fp16,bf16"], environ={}), tmp_path)
    names = [s.name for s in steps]
    methods = suite.search_methods()
    assert names[:8] == ["preflight", "shortcut_memory fp16", "eval_throughput fp16", "pytest -m gpu",
                         "shortcut_memory sdxl", "shortcut_memory sd3", "shortcut_memory flux", "save random model"]
    optimize = names[8:8 + len(methods)]
    assert optimize[:2] == ["optimize hybrid fp16", "optimize mf fp16"]
    assert sorted(optimize) == sorted(f"optimize {m} fp16" for m in methods) and "llm" not in methods
    assert names[8 + len(methods):] == ["shortcut_memory bf16", "eval_throughput bf16"]  # further dtypes last
    assert len(set(names)) == len(names)  # no step runs twice
    argv = {s.name: s.argv for s in steps}
    assert argv["pytest -m gpu"][-5:-3] == ["-m", "gpu"]
    dry = {s.name: s.argv for s in suite.plan(suite.parse_args(["--dry"], environ={}), tmp_path)}["pytest -m gpu"]
    assert dry[-7:-3] == ["-m", "not slow", "-k", "gpu"] and set(suite.GPU_TEST_FILES) <= set(dry)
    assert {"tests/test_gpu.py", *suite.GPU_TEST_FILES} <= set(argv["pytest -m gpu"])  # every file with gpu tests
    assert "--skip-hybrid" in argv["eval_throughput fp16"]  # hybrid at budget 40 runs once: the optimize step
    for name in ("shortcut_memory fp16", "eval_throughput fp16"):
        assert "sd15" in argv[name] and "cuda" in argv[name]
    opt = argv["optimize hybrid fp16"]
    for flag, value in (("--method", "hybrid"), ("--budget", "40"), ("--steps", "50"), ("--device", "cuda")):
        assert opt[opt.index(flag) + 1] == value
    mf = argv["optimize mf fp16"]
    assert mf[mf.index("--mf-ladder") + 1].startswith("shortcut:")  # the shortcut previews run on the GPU too
    for arch in ("sdxl", "sd3", "flux"):
        mem = argv[f"shortcut_memory {arch}"]
        assert mem[mem.index("--arch") + 1] == arch and mem[mem.index("--size") + 1] == "full" and "bf16" in mem
        assert ("--grad-checkpointing" in mem) == (arch == "sdxl")  # the flow backbones checkpoint per block
    assert all(s.needs == "save random model" for s in steps if s.name.startswith("optimize"))


def test_the_plan_fits_one_command_of_8_minutes_on_an_h100(suite, tmp_path, capsys):
    args = suite.parse_args([], environ={})
    steps = suite.plan(args, tmp_path, suite.H100_TFLOPS)
    total = suite.print_plan(steps, suite.H100_TFLOPS, "assumed", args.deadline)
    assert total < 8 * 60 and args.deadline < 8 * 60 - 10  # the kit's install and the report fit in the rest
    assert all(s.estimate > 0 for s in steps)
    out = capsys.readouterr().out
    assert "not measurements" in out and f"estimated total {total:.0f} s" in out
    big = {s.name: s.estimate for s in steps}
    assert big["shortcut_memory flux"] > big["shortcut_memory sdxl"]  # the estimate follows the sizes
    slower = suite.plan(args, tmp_path, suite.H100_TFLOPS / 4)
    assert sum(s.estimate for s in slower) > total  # and the device's speed


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
    (tmp_path / "memory_flux.json").write_text(json.dumps({"rows": [{"mode": "warm-up", "steps": 4, "oom": True}]}))
    (tmp_path / "memory_sdxl.json").write_text(json.dumps({"rows": [
        {"mode": "shortcut+ckpt", "steps": 50, "saved_bytes": 1, "seconds": 1.0, "peak_bytes": 19 * gib}]}))
    (tmp_path / "throughput_fp16.json").write_text(json.dumps({"ratio": 3.0}))
    (tmp_path / "optimize_hybrid_result.json").write_text(json.dumps({"search_seconds": 18.0}))
    (tmp_path / "optimize_tpe_result.json").write_text(json.dumps({"search_seconds": 5.0}))
    numbers = suite.collect(tmp_path, ["fp16", "bf16"], ["hybrid", "mf", "tpe"])
    assert numbers["fp16"]["saved_ratio"] == pytest.approx(1.02) and numbers["bf16"]["batched_ratio"] is None
    assert numbers["bf16"]["flux_peak"] == "oom" and numbers["bf16"]["sdxl_peak"] == 19 * gib
    steps = [suite.Step("pytest -m gpu", [], 1, status="ok", seconds=3.0, estimate=70)]
    table = suite.summary(numbers, steps, dry=False, methods=["hybrid", "mf", "tpe"])
    row = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert "7.00 GB PASS" in row["GPO iteration peak, paper preset (pytest)"]
    assert "9.00 GB FAIL" in row["GPO iteration peak, robust preset (pytest)"]
    assert "3.00x FAIL" in row["batched / one-at-a-time throughput"]
    assert "18.0 s PASS" in row["hybrid, budget 40, `dpo-diff optimize` search time"]
    assert "5.0 s" in row["tpe, budget 8 at 10 steps, `dpo-diff optimize` search time"]
    assert "n/a" in row["batched / one-at-a-time throughput"]  # bf16 has no result
    flux = "FLUX.1-dev GPO iteration peak, 1024 px, true CFG, per-block checkpointing (benchmark)"
    assert "out of memory FAIL" in row[flux]
    assert "19.00 GB PASS" in row["SDXL GPO iteration peak, 1024 px, grad checkpointing (benchmark)"]
    oom = row["GPO out-of-memory retry starts with the failed graph freed (pytest)"]
    assert "| recovered PASS | - n/a | recovered |" in oom
    assert "failed FAIL" in row["fp16 GPO with gradient overflow backs off and recovers (pytest)"]
    assert "| pytest -m gpu | ok | 3.0 | 70 |" in table
    assert "PASS" not in suite.summary(numbers, steps, dry=True)  # a dry run judges no target


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failed_hybrid_does_not_skip_mf_and_every_row_is_written_when_its_step_ends(suite, tmp_path):
    """gpu_suite.py:153 (issue 27): optimize mf was skipped whenever optimize hybrid failed (it checked the step
    before it, not the model-saving step)."""
    results = tmp_path / "out"
    steps = [suite.Step("preflight", py("pass"), 30),
             suite.Step("save random model", py("print('saved')"), 30),
             suite.Step("optimize hybrid fp16", py("raise SystemExit(3)"), 30, needs="save random model"),
             suite.Step("optimize mf fp16", py("print('mf ran')"), 30, needs="save random model"),
             suite.Step("shortcut_memory flux", py(f"import json, pathlib; rows = [json.loads(l) for l in "
                                                   f"pathlib.Path({str(results / 'steps.jsonl')!r}).read_text()"
                                                   f".splitlines()]; assert len(rows) == 4, rows"), 30)]
    suite.run_steps(steps, 100, tmp_path, results)
    status = {s.name: s.status for s in steps}
    assert status == {"preflight": "ok", "save random model": "ok", "optimize hybrid fp16": "failed (rc 3)",
                      "optimize mf fp16": "ok", "shortcut_memory flux": "ok"}  # the last saw 4 rows already
    rows = [json.loads(line) for line in (results / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s.name for s in steps] and rows[2]["status"] == "failed (rc 3)"
    assert (results / "log_01_save_random_model.txt").read_text().strip() == "saved"


def test_steps_that_need_a_failed_step_or_a_failed_preflight_are_skipped(suite, tmp_path):
    steps = [suite.Step("save random model", py("raise SystemExit(1)"), 30),
             suite.Step("optimize hybrid fp16", py("pass"), 30, needs="save random model")]
    suite.run_steps(steps, 100, tmp_path)
    assert steps[1].status == "skipped (needs save random model)"
    steps = [suite.Step("preflight", py("import no_such_module_here"), 30), suite.Step("x", py("pass"), 30)]
    suite.run_steps(steps, 100, tmp_path)
    assert steps[0].status == "failed (rc 1)" and steps[1].status == "skipped (preflight failed)"


def test_a_run_without_cuda_is_refused(suite, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert suite.main(["--work", str(tmp_path), "--results", str(tmp_path / "r")]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "r" / "steps.jsonl").exists()


def test_the_memory_benchmark_reports_an_out_of_memory_warm_up_as_a_row(load_script, tmp_path, monkeypatch):
    bench = load_script("benchmarks/shortcut_memory.py")

    def oom(*a, **k):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")

    monkeypatch.setattr(bench, "one_iteration", oom)
    monkeypatch.setattr(sys, "argv", ["shortcut_memory.py", "--steps", "4", "--full-steps", "",
                                      "--json", str(tmp_path / "m.json")])
    bench.main()
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert rows == [{"mode": "warm-up", "steps": 4, "oom": True}, {"mode": "shortcut", "steps": 4, "oom": True}]


def test_the_shell_wrapper_prints_the_plan():
    out = subprocess.run(["bash", "scripts/gpu_suite.sh", "--plan", "--dry", "--work", "unused"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "optimize hybrid fp32" in out.stdout and "--arch tiny" in out.stdout


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    """The whole suite on the CPU with the tiny model (a few minutes)."""
    out = subprocess.run(["bash", "scripts/gpu_suite.sh", "--dry", "--work", str(tmp_path), "--results",
                          str(tmp_path), "--deadline", "900"],
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
