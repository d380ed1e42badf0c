"""The GPU suite: every GPU check and benchmark in one command, one summary table (run via ``scripts/gpu_suite.sh``).

Steps, in order of value, so that a deadline cuts the cheap ones (SD v1.x architecture at 512 px and the 1024 px
backbones' shapes, random weights: costs do not depend on values):

1. ``preflight``: the packages import (from the device kit's wheels and ``src/``, see ``scripts/device_kit.sh``);
   nothing else runs when they do not.
2. ``benchmarks/shortcut_memory.py`` (first dtype): one GPO iteration's saved bytes, time and peak at 25/50/100
   steps, and the full gradient at 25 steps.
3. ``benchmarks/eval_throughput.py`` (first dtype): batched vs one-at-a-time evaluation, GPO's seconds per charged
   unit.
4. ``pytest -m gpu`` (``tests/test_gpu.py`` and :data:`GPU_TEST_FILES`): CPU/CUDA image parity, one GPO iteration
   per dtype and preset (peak memory, finite non-zero text gradient), recovery from real CUDA out-of-memory (GPO and
   batched evaluation), fp16 overflow, the VQA judge, SDXL fp16 with its fp32 VAE, the soft chunk bias, long prompts.
5. ``benchmarks/shortcut_memory.py --arch sdxl``, ``sd3`` and ``flux``: one GPO iteration's peak at 50 steps for
   SDXL-base (``--grad-checkpointing``), SD 3.5 medium and FLUX.1-dev shapes (1024 px, bf16; the flow backbones
   checkpoint per block in grad mode by default; FLUX with true CFG).
6. ``dpo-diff optimize`` once per search method on the random SD v1.x weights saved in ``save_pretrained`` layout:
   hybrid at budget 40 and 50 steps (the target), the others smaller; mf with ``shortcut:K`` previews.
7. Further dtypes (``--dtypes fp16,bf16``): their memory and throughput benchmarks, last.

Every step appends its row to ``steps.jsonl`` in the results folder (``--results``; default ``$OUT`` where that is
set, else the work folder) as soon as it finishes, with its log and JSON results beside it, so a run cut off by a
deadline still returns what it measured. ``--plan`` prints the steps with estimated seconds from the sizes and the
device's measured matmul TFLOP/s (``--tflops`` where there is no GPU) and exits.

Targets: one GPO iteration <= 8 GB peak; batched evaluation >= 3.5x the one-at-a-time scheme; hybrid at budget 40
<= 20 s per prompt at 50 steps; SDXL <= 20 GB, SD 3.5 <= 24 GB, FLUX <= 40 GB. On a GPU the report goes to
``docs/gpu.md``. ``--dry`` (or ``DRY=1``) runs the same steps on the CPU with the tiny model and small sizes and
writes the report to the results folder unless ``--out`` is given. Without ``--dry`` it refuses to run where
``torch.cuda.is_available()`` is false (GPU tests would only be skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
TARGETS = {"gpo_peak_gb": 8.0, "batched_ratio": 3.5, "hybrid_s": 20.0, "gpo_unit_ratio": 1.2, "sd3_peak_gb": 24.0,
           "flux_peak_gb": 40.0, "sdxl_peak_gb": 20.0}
FLOW_ARCHS = ("sd3", "flux")  # SD 3.5 medium and FLUX.1-dev shapes
# 1024 px backbones: the mode measured. SDXL with --grad-checkpointing; the flow backbones checkpoint per block in
# grad mode already (backends/flow.py), which is how they run by default
BIG_ARCHS = {"sdxl": "shortcut+ckpt", **{a: "shortcut" for a in FLOW_ARCHS}}
PROMPT = "a red car on a snowy road"
PREFLIGHT = ("import importlib.metadata as m, sys, torch, dpo_diff, diffusers, pydantic, optuna, transformers; "
             "print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), "
             "*[f'{d} {m.version(d)}' for d in ('diffusers', 'transformers', 'pydantic', 'optuna')]); "
             "print('dpo_diff from', dpo_diff.__file__)")

# The cost model of --plan (estimates, not measurements). A denoiser call on one image at the suite's resolution, in
# TFLOP (2 x multiply-adds): SD 1.x UNet at 512 px; SDXL UNet, SD 3.5 medium MMDiT and FLUX.1-dev at 1024 px
# (weights x 2 x tokens, plus attention); the tiny test models cost nothing.
CALL_TFLOP = {"sd15": 0.8, "sdxl": 6.0, "sd3": 25.0, "flux": 125.0, "tiny": 0.0}
EFFICIENCY = 0.35  # a denoiser's FLOP rate as a share of a large matmul's (assumed)
CALL_FLOOR_S = {"sd15": 0.015, "sdxl": 0.03, "sd3": 0.03, "flux": 0.05, "tiny": 0.004}  # launch-bound batch-1 call
H100_TFLOPS = 600.0  # assumed dense fp16/bf16 matmul rate of an H100 where --plan cannot measure one
DEADLINE_S = 460.0
START_S = 12.0  # a process that imports torch, diffusers and transformers and builds or loads a model (assumed)


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    estimate: float = 0.0  # seconds, from the cost model
    needs: str | None = None  # a step that must have succeeded first
    outputs: tuple[str, ...] = ()  # files in the work folder to copy to the results folder when it finishes
    status: str = "not run"  # ok | failed (rc N) | timeout | skipped (...)
    seconds: float = 0.0
    log: str = ""


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="gpu_suite.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true",
                        help="the same steps on the CPU with the tiny model and small sizes (also: DRY=1)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated generator dtypes of the SD 1.x benchmarks (default fp16 on a GPU, "
                             "where the pytest step covers bf16 too; fp32 in dry mode)")
    parser.add_argument("--device", default=None, help="default cuda (cpu in dry mode)")
    parser.add_argument("--out", default=None,
                        help="Markdown report (default docs/gpu.md; in dry mode gpu.md in the results folder)")
    parser.add_argument("--work", default=None, help="folder for the saved random model and optimize runs")
    parser.add_argument("--results", default=None,
                        help="folder for each step's row, log and JSON as it finishes (default $OUT, else --work)")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S,
                        help="seconds for the whole suite; steps that would start later are skipped (default "
                             f"{DEADLINE_S:g}: with the kit's install, one command stays under 8 minutes)")
    parser.add_argument("--plan", action="store_true", help="print the steps with estimated seconds and exit")
    parser.add_argument("--tflops", type=float, default=None,
                        help="matmul TFLOP/s for --plan's estimates (default: measured on the device; "
                             f"{H100_TFLOPS:g}, an H100's, assumed, where there is no CUDA device)")
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if environ.get("DRY", "") not in ("", "0"):
        args.dry = True
    args.device = args.device or ("cpu" if args.dry else "cuda")
    args.dtypes = [d for d in (args.dtypes or ("fp32" if args.dry else "fp16")).split(",") if d]
    bad = [d for d in args.dtypes if d not in ("fp32", "fp16", "bf16")]
    if bad or not args.dtypes:
        parser.error(f"--dtypes takes fp32, fp16, bf16 (comma-separated), got {bad or 'nothing'}")
    if args.deadline <= 0:
        parser.error("--deadline must be positive")
    return args


def sizes(dry: bool) -> dict:
    """Problem sizes: the real ones on a GPU, small ones for the dry run."""
    if dry:
        return dict(arch="tiny", mem_steps="4,8", full_steps="4", eval_steps=4, candidates=4, batch_size=4,
                    opt_steps=4, small_steps=4, small_budget=8, timeout=300.0)
    return dict(arch="sd15", mem_steps="25,50,100", full_steps="25", eval_steps=50, candidates=32, batch_size=32,
                opt_steps=50, small_steps=10, small_budget=8, timeout=240.0)


GPU_TEST_FILES = ("tests/test_key_bias.py", "tests/test_flow_long_prompts.py")  # gpu tests outside test_gpu.py


def search_methods() -> list[str]:
    """Every search method that runs offline (``dpo_diff.search.METHODS`` less those that need an LLM endpoint)."""
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from dpo_diff.search import METHODS, NEEDS_ENDPOINT
    finally:
        sys.path.pop(0)
    return [m for m in METHODS if m not in NEEDS_ENDPOINT]


def _call_s(arch: str, images: int, tflops: float) -> float:
    """Estimated seconds of one denoiser call on ``images`` images."""
    return max(CALL_FLOOR_S[arch], images * CALL_TFLOP[arch] / (tflops * EFFICIENCY))


def _memory_s(arch: str, steps: list[int], full: list[int], tflops: float, ckpt: bool) -> float:
    """shortcut_memory.py: a 4-step warm-up, then per step count k = 0.3 n no-grad CFG calls and one grad call
    (forward + backward ~ 3 calls, 4 with checkpointing), plus the decode (~3 calls); the full gradient: 3 n."""
    grad = 4 if ckpt else 3
    calls = sum(0.3 * n + grad + 3 for n in [4, *steps]) + sum(3 * n + 3 for n in full)
    return calls * _call_s(arch, 2, tflops)


def plan(args: argparse.Namespace, work: Path, tflops: float = H100_TFLOPS) -> list[Step]:
    py, sz, results = args.python, sizes(args.dry), Path(args.results or work)
    arch, first = sz["arch"], args.dtypes[0]
    hf = {"HF_HUB_OFFLINE": "1"}
    steps = [Step("preflight", [py, "-c", PREFLIGHT], 60, estimate=8)]

    def sd15_steps(dtype: str) -> list[Step]:
        mem, full = [int(s) for s in sz["mem_steps"].split(",")], [int(s) for s in sz["full_steps"].split(",") if s]
        n, bs, st = sz["candidates"], sz["batch_size"], sz["eval_steps"]
        one = min(n, 8) * st * _call_s(arch, 2, tflops)  # one candidate per sampler call
        batched = (n // bs) * st * _call_s(arch, 2 * bs, tflops) + st * _call_s(arch, 2, tflops)  # + warm-up
        gpo = 2 * 3 * 4 * (15 + 3) * _call_s(arch, 2, tflops)  # 2 configurations x 3 iterations x 4 samples
        return [
            Step(f"shortcut_memory {dtype}", [
                py, "benchmarks/shortcut_memory.py", "--arch", arch, "--device", args.device, "--dtype", dtype,
                "--steps", sz["mem_steps"], "--full-steps", sz["full_steps"],
                "--json", str(results / f"memory_{dtype}.json")],
                sz["timeout"] / 2, estimate=START_S + _memory_s(arch, mem, full, tflops, False)),
            Step(f"eval_throughput {dtype}", [
                py, "benchmarks/eval_throughput.py", "--arch", arch, "--device", args.device, "--dtype", dtype,
                "--steps", str(st), "--candidates", str(n), "--batch-size", str(bs), "--skip-hybrid",
                "--json", str(results / f"throughput_{dtype}.json")],  # hybrid: the optimize step's
                sz["timeout"], estimate=START_S + one + batched + gpo),
        ]

    steps += sd15_steps(first)
    # Every file with @pytest.mark.gpu tests. Dry: the same files, the CPU variant of the GPU measurement run and the
    # GPU tests collected and skipped (so their imports are checked on the image), the files' other tests left out.
    files = ["tests/test_gpu.py", *GPU_TEST_FILES]
    select = ["-m", "not slow", "-k", "gpu"] if args.dry else ["-m", "gpu"]
    pytest = [py, "-m", "pytest", *files, "-q", *select, "-rs", "-p", "no:cacheprovider"]
    steps.append(Step("pytest -m gpu", pytest, sz["timeout"],
                      env={"DPO_DIFF_GPU_RESULTS": str(results / "gpu_tests.jsonl"), **hf},
                      estimate=20 + 4 * START_S + 2 * 2 * _memory_s(arch, [50], [], tflops, False)))
    for big, mode in BIG_ARCHS.items():  # full shapes in bf16 on a GPU (fp16 overflows them); tiny models in dry mode
        mem = ["--steps", "4,8", "--full-steps", "4", "--dtype", "fp32"] if args.dry else [
            "--steps", "50", "--full-steps", "", "--dtype", "bf16", "--size", "full"]
        mem += ["--grad-checkpointing"] if mode.endswith("+ckpt") else []
        cost = 0.0 if args.dry else _memory_s(big, [50], [], tflops, True)  # per-block or whole-call recompute
        build = START_S + (0 if args.dry else {"sdxl": 10, "sd3": 20, "flux": 40}[big])  # random init of the weights
        steps.append(Step(f"shortcut_memory {big}", [
            py, "benchmarks/shortcut_memory.py", "--arch", big, "--device", args.device, *mem,
            "--json", str(results / f"memory_{big}.json")], sz["timeout"] * 0.75, estimate=build + cost))
    model, judge, space = work / "model", work / "judge", work / "spaces.json"
    steps.append(Step("save random model", [
        py, str(Path(__file__).resolve()), "--save-model", str(model), "--arch", arch, "--dtype", first,
        "--device", args.device, "--judge", str(judge), "--space", str(space),
    ], sz["timeout"] / 2, estimate=START_S + 5))
    # hybrid and mf at the target's size first; then the methods nothing else runs (greedy, tpe, random) before those
    # whose parts hybrid already ran (gpo, epo), so that a deadline cuts the least new first. The small ones check
    # that each search runs on CUDA (budget 8 at 10 steps), not how fast: the lease has 8 minutes.
    order = ("hybrid", "mf", "greedy", "tpe", "random", "gpo", "epo")
    methods = sorted(search_methods(), key=lambda m: order.index(m) if m in order else len(order))
    for method in methods:
        main = method in ("hybrid", "mf")  # at the target's size; the others smaller
        budget, n_steps = (40, sz["opt_steps"]) if main else (sz["small_budget"], sz["small_steps"])
        extra = ["--mf-ladder", "shortcut:30%,steps:20%,full"] if method == "mf" else []
        # budget x steps denoiser calls on batches of batch_size rows, the report's 2 pairs x 1 seed; GPO (30% of
        # the budget) runs its Gumbel samples one per pass on a GPU, with a backward: ~1.3 calls per charged call
        calls = budget * n_steps / max(1, sz["batch_size"] // 2) + 2 * n_steps
        if method in ("gpo", "hybrid"):
            calls += 0.3 * budget * n_steps * 1.3 * _call_s(arch, 2, tflops) / _call_s(arch, sz["batch_size"], tflops)
        steps.append(Step(f"optimize {method} {first}", [
            py, "-m", "dpo_diff.cli", "optimize", "--prompt", PROMPT, "--task", "improve", "--space", str(space),
            "--model", str(model), "--judge", str(judge), "--method", method, "--budget", str(budget),
            "--steps", str(n_steps), "--dtype", first, "--device", args.device, "--seeds", "0",
            "--report-seeds", "100", "--batch-size", str(sz["batch_size"]), *extra,
            "--out", str(work / f"optimize_{method}"), "--overwrite", "--quiet",
        ], sz["timeout"], env=hf, needs="save random model", outputs=(f"optimize_{method}/result.json",),
            estimate=START_S + calls * _call_s(arch, sz["batch_size"], tflops)))
    for dtype in args.dtypes[1:]:
        steps += sd15_steps(dtype)
    return steps


def measured_tflops(device: str) -> float | None:
    """Dense matmul TFLOP/s on ``device`` (fp16 on CUDA, fp32 on the CPU), or None where torch cannot tell."""
    try:
        import torch
    except ImportError:
        return None
    if device.startswith("cuda") and not torch.cuda.is_available():
        return None
    n, dtype = (8192, torch.float16) if device.startswith("cuda") else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ a
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        a @ a
        reps += 1
        sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def run_steps(steps: list[Step], deadline: float, work: Path, results: Path | None = None) -> None:
    """Run the steps in order within ``deadline`` seconds; after each, append its row to ``steps.jsonl`` and put
    its log and outputs in ``results``."""
    results = results or work
    results.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    status = {}
    for i, step in enumerate(steps):
        left = deadline - (time.monotonic() - start)
        if status.get("preflight", "ok") != "ok":
            step.status = "skipped (preflight failed)"
        elif left < 10:
            step.status = "skipped (deadline)"
        elif step.needs and status.get(step.needs) != "ok":
            step.status = f"skipped (needs {step.needs})"
        else:
            _run(step, left)
        status[step.name] = step.status
        slug = "".join(c if c.isalnum() else "_" for c in step.name)
        if step.log:
            (results / f"log_{i:02d}_{slug}.txt").write_text(step.log)
        for rel in step.outputs:
            if (work / rel).is_file() and work != results:
                shutil.copyfile(work / rel, results / rel.replace("/", "_"))
        with open(results / "steps.jsonl", "a") as f:
            f.write(json.dumps({"step": step.name, "status": step.status, "seconds": round(step.seconds, 2),
                                "estimate_s": round(step.estimate, 1)}) + "\n")


def _run(step: Step, left: float) -> None:
    print(f"== {step.name}: {shlex.join(step.argv)}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(step.argv, cwd=ROOT, env={**os.environ, **step.env}, capture_output=True,
                              text=True, timeout=min(step.timeout, left))
        step.log = proc.stdout + proc.stderr
        step.status = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        step.log = out.decode(errors="replace") if isinstance(out, bytes) else out
        step.status = "timeout"
    step.seconds = time.monotonic() - t0
    print(f"   {step.status} in {step.seconds:.1f} s (estimated {step.estimate:.0f} s)", flush=True)
    if step.status != "ok":
        print("   " + "\n   ".join(step.log.strip().splitlines()[-15:]), flush=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(results: Path, dtypes: list[str], methods: list[str] | None = None) -> dict:
    """Numbers for the summary, per dtype (missing ones stay None), from the results folder."""
    out: dict = {d: {} for d in dtypes}
    tests = results / "gpu_tests.jsonl"
    for line in tests.read_text().splitlines() if tests.exists() else []:
        row = json.loads(line)
        if row.get("check") == "gpo_iteration" and row.get("dtype") in out:
            out[row["dtype"]][f"gpo_peak_{row['preset']}"] = row["peak_bytes"]
        if row.get("check") in ("oom_retry", "fp16_overflow", "eval_oom") and row.get("dtype") in out:
            out[row["dtype"]][row["check"]] = row["ok"]  # recovery checks
    for d in dtypes:
        mem = _read_json(results / f"memory_{d}.json") or {}
        rows = {(r["mode"], r["steps"]): r for r in mem.get("rows", []) if not r.get("oom")}
        if ("shortcut", 50) in rows:
            out[d]["shortcut50_peak"] = rows["shortcut", 50]["peak_bytes"]
            out[d]["shortcut50_s"] = rows["shortcut", 50]["seconds"]
        short = sorted(s for m, s in rows if m == "shortcut")
        if len(short) >= 2:
            lo, hi = rows["shortcut", short[0]], rows["shortcut", short[-1]]
            out[d]["saved_ratio"] = hi["saved_bytes"] / max(lo["saved_bytes"], 1)
        thr = _read_json(results / f"throughput_{d}.json") or {}
        out[d]["batched_ratio"] = thr.get("ratio")
        out[d]["gpo_chunk1_ratio"] = thr.get("gpo_chunk1_ratio")
        out[d]["gpo_batched_ratio"] = thr.get("gpo_batched_ratio")
    if dtypes:  # the 1024 px backbones run in bf16 only: their numbers go to that column
        col = "bf16" if "bf16" in out else dtypes[0]
        for arch, mode in BIG_ARCHS.items():
            rows = [r for r in (_read_json(results / f"memory_{arch}.json") or {}).get("rows", [])
                    if r["mode"] in (mode, "warm-up")]
            measured = {r["steps"]: r["peak_bytes"] for r in rows if r["mode"] == mode and not r.get("oom")}
            out[col][f"{arch}_peak"] = (measured[max(measured)] if measured
                                        else "oom" if any(r.get("oom") for r in rows) else None)
        for method in methods or ("hybrid", "mf"):
            res = _read_json(results / f"optimize_{method}_result.json") or _read_json(
                results / f"optimize_{method}" / "result.json") or {}
            out[dtypes[0]][f"cli_{method}_s"] = res.get("search_seconds")
    return out


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if value == "oom":
        return "out of memory"
    if kind == "ok":
        return "recovered" if value else "failed"
    if kind == "gb":
        return f"{value / GIB:.2f} GB"
    if kind == "x":
        return f"{value:.2f}x"
    return f"{value:.1f} s"


def _verdict(value, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    if value == "oom":
        return "FAIL"
    if isinstance(value, bool):
        return "PASS" if value == target else "FAIL"
    return "PASS" if (value >= target if higher_is_better else value <= target) else "FAIL"


def summary(numbers: dict, steps: list[Step], dry: bool, methods: list[str] = ()) -> str:
    """The Markdown summary: one row per measured quantity, one column per dtype, the target and the verdicts."""
    dtypes = list(numbers)
    rows = [
        ("GPO iteration peak, paper preset (pytest)", "gpo_peak_paper", "gb", TARGETS["gpo_peak_gb"] * GIB, False),
        ("GPO iteration peak, robust preset (pytest)", "gpo_peak_robust", "gb", TARGETS["gpo_peak_gb"] * GIB, False),
        ("GPO out-of-memory retry starts with the failed graph freed (pytest)", "oom_retry", "ok", True, True),
        ("fp16 GPO with gradient overflow backs off and recovers (pytest)", "fp16_overflow", "ok", True, True),
        ("shortcut iteration peak at 50 steps (benchmark)", "shortcut50_peak", "gb", TARGETS["gpo_peak_gb"] * GIB,
         False),
        ("shortcut saved bytes, 100/25 steps", "saved_ratio", "x", None, False),
        ("batched / one-at-a-time throughput", "batched_ratio", "x", TARGETS["batched_ratio"], True),
        ("GPO s per charged unit / batched evaluation's, 1 sample per pass", "gpo_chunk1_ratio", "x",
         TARGETS["gpo_unit_ratio"], False),
        ("GPO s per charged unit / batched evaluation's, 4 samples per pass", "gpo_batched_ratio", "x",
         TARGETS["gpo_unit_ratio"], False),
        ("hybrid, budget 40, `dpo-diff optimize` search time", "cli_hybrid_s", "s", TARGETS["hybrid_s"], False),
        ("mf, budget 40, `dpo-diff optimize` search time", "cli_mf_s", "s", TARGETS["hybrid_s"], False),
        *[(f"{m}, budget 8 at 10 steps, `dpo-diff optimize` search time", f"cli_{m}_s", "s", None, False)
          for m in methods if m not in ("hybrid", "mf")],
        ("batched evaluation recovers from a real CUDA out-of-memory (pytest)", "eval_oom", "ok", True, True),
        ("SDXL GPO iteration peak, 1024 px, grad checkpointing (benchmark)", "sdxl_peak", "gb",
         TARGETS["sdxl_peak_gb"] * GIB, False),
        ("SD 3.5 medium GPO iteration peak, 1024 px, per-block checkpointing (benchmark)", "sd3_peak", "gb",
         TARGETS["sd3_peak_gb"] * GIB, False),
        ("FLUX.1-dev GPO iteration peak, 1024 px, true CFG, per-block checkpointing (benchmark)", "flux_peak", "gb",
         TARGETS["flux_peak_gb"] * GIB, False),
    ]
    head = "| measure | " + " | ".join(dtypes) + " | target |"
    lines = [head, "|" + "---|" * (len(dtypes) + 2)]
    for label, key, kind, target, higher in rows:
        cells = []
        for d in dtypes:
            v = numbers[d].get(key)
            verdict = "" if target is None or dry else f" {_verdict(v, target, higher)}"
            cells.append(_fmt(v, kind) + verdict)
        if target is None or kind == "ok":
            tgt = {"saved_ratio": "<= 1.05x"}.get(key, _fmt(target, kind) if kind == "ok" else "")
        else:
            tgt = (">= " if higher else "<= ") + _fmt(target, kind)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {tgt} |")
    lines += ["", "| step | status | seconds | estimated |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.estimate:.0f} |" for s in steps]
    if dry:
        lines += ["", "Dry run (CPU, tiny model, small sizes): the numbers check the plumbing, not the targets."]
    return "\n".join(lines)


def environment() -> str:
    import platform

    try:
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        return f"torch {torch.__version__}, {dev}, Python {platform.python_version()}"
    except ImportError:
        return f"Python {platform.python_version()}"


def save_random_model(argv: list[str]) -> None:
    """``--save-model DIR``: write the random generator (``save_pretrained`` layout), a tiny CLIP judge and a space
    file for the optimize step."""
    p = argparse.ArgumentParser()
    for a in ("--save-model", "--arch", "--dtype", "--device", "--judge", "--space"):
        p.add_argument(a, required=True)
    a = p.parse_args(argv)
    from diffusers import StableDiffusionPipeline

    from dpo_diff.space import save_spaces, space_from_substitutes
    from dpo_diff.testing import random_backend, save_tiny_clip

    b = random_backend(a.arch, a.device, a.dtype)
    StableDiffusionPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                            scheduler=b.new_scheduler(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(a.save_model)
    save_tiny_clip(a.judge, image_size=224 if a.arch == "sd15" else 32)
    space = space_from_substitutes(PROMPT, antonyms={"red": ["blue", "green", "yellow"],
                                                     "snowy": ["sunny", "dry", "green"]})
    save_spaces([space], a.space)


def print_plan(steps: list[Step], tflops: float, source: str, deadline: float) -> float:
    total = sum(s.estimate for s in steps)
    print(f"plan at {tflops:.1f} matmul TFLOP/s ({source}); estimated seconds per step (cost model in "
          f"scripts/gpu_suite.py, not measurements):")
    for s in steps:
        env = " ".join(f"{k}={v}" for k, v in s.env.items())
        print(f"  ~{s.estimate:5.0f} s  {s.name}: {(env + ' ') if env else ''}{shlex.join(s.argv)}")
    print(f"estimated total {total:.0f} s against the deadline of {deadline:.0f} s")
    return total


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--save-model"]:
        save_random_model(argv)
        return 0
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_suite_"))
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results or os.environ.get("OUT") or work)
    args.results = str(results)
    tflops, source = args.tflops, "given"
    if tflops is None:
        tflops = measured_tflops(args.device) if args.plan or not args.dry else None
        source = f"measured on {args.device}" if tflops else "an H100's, assumed: no CUDA device here"
        tflops = tflops or H100_TFLOPS
    steps = plan(args, work, tflops)
    if args.plan:
        print_plan(steps, tflops, source, args.deadline)
        return 0
    if not args.dry:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA device (torch.cuda.is_available() is False): the GPU tests would only be "
                  "skipped. Run it on a GPU, or use --dry for the CPU rehearsal.", file=sys.stderr)
            return 2
    src = str(ROOT / "src")
    if src not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # the steps import dpo_diff from here
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    results.mkdir(parents=True, exist_ok=True)
    for name in ("gpu_tests.jsonl", "steps.jsonl"):
        (results / name).unlink(missing_ok=True)
    t0 = time.monotonic()
    print_plan(steps, tflops, source, args.deadline)
    run_steps(steps, args.deadline, work, results)
    methods = search_methods()
    table = summary(collect(results, args.dtypes, methods), steps, args.dry, methods)
    mode = "dry run on the CPU" if args.dry else f"device {args.device}"
    report = (f"# GPU suite\n\nMade by `scripts/gpu_suite.sh{' --dry' if args.dry else ''}` ({mode}; "
              f"{environment()}; {time.strftime('%Y-%m-%d')}; {time.monotonic() - t0:.0f} s in all). SD v1.x "
              f"architecture at 512 px with random weights{' (dry: the tiny model instead)' if args.dry else ''}.\n\n"
              f"{table}\n")
    out = Path(args.out) if args.out else (results / "gpu.md" if args.dry else ROOT / "docs" / "gpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    if out.parent != results:
        (results / "gpu.md").write_text(report)
    print("\n" + table + f"\n\nreport: {out}\nresults: {results}")
    return 0 if all(s.status == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
