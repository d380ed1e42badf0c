"""The GPU suite: every GPU check and benchmark in one command, one summary table (run via ``scripts/gpu_suite.sh``).

Steps (SD v1.x architecture at 512 px with random weights: costs do not depend on values):

1. ``pytest -m gpu`` (``tests/test_gpu.py`` and :data:`GPU_TEST_FILES`): CPU/CUDA image parity, one GPO iteration
   per dtype and preset (peak memory, finite non-zero text gradient), the soft chunk bias in fp16/bf16, long prompts
   on SD 3/FLUX, GPO's recovery from a real CUDA out-of-memory and from fp16 gradient overflow
   (tiny model, fp16).
2. ``benchmarks/shortcut_memory.py`` per dtype: one GPO iteration's saved bytes, time and peak at 25/50/100 steps.
3. ``benchmarks/eval_throughput.py`` per dtype: batched vs one-at-a-time evaluation; hybrid at budget 40.
4. ``dpo-diff optimize --method hybrid`` and ``--method mf`` on the random weights saved in ``save_pretrained``
   layout (first dtype).
5. ``benchmarks/shortcut_memory.py --arch sdxl``, ``--arch sd3`` and ``--arch flux``: one GPO iteration's peak at
   50 steps for SDXL-base (with ``--grad-checkpointing``), SD 3.5 medium and FLUX.1-dev shapes (1024 px, bf16,
   random weights; FLUX with true CFG, as its improve task needs).

Targets: one GPO iteration <= 8 GB peak; batched evaluation >= 3.5x the one-at-a-time scheme; hybrid at budget 40
<= 20 s per prompt at 50 steps. On a GPU the report goes to ``docs/gpu.md``. ``--dry`` (or ``DRY=1``) runs the same
steps on the CPU with the tiny model and small sizes (a couple of minutes) and writes the report to a temporary
folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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
BIG_ARCHS = {"sdxl": "shortcut+ckpt", **{a: "shortcut" for a in FLOW_ARCHS}}  # 1024 px backbones: the mode measured
PROMPT = "a red car on a snowy road"


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    status: str = "not run"  # ok | failed (rc N) | timeout | skipped (...)
    seconds: float = 0.0
    log: str = ""


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="gpu_suite.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true",
                        help="the same steps on the CPU with the tiny model and small sizes (also: DRY=1)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated generator dtypes (default fp16,bf16 on a GPU; fp32 in dry mode)")
    parser.add_argument("--device", default=None, help="default cuda (cpu in dry mode)")
    parser.add_argument("--out", default=None,
                        help="Markdown report (default docs/gpu.md; in dry mode a file in the work folder)")
    parser.add_argument("--work", default=None, help="folder for logs, JSON results and the saved random model")
    parser.add_argument("--deadline", type=float, default=480.0,
                        help="seconds for the whole suite; steps that would start later are skipped (default 480)")
    parser.add_argument("--plan", action="store_true", help="print the steps' commands and exit")
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if environ.get("DRY", "") not in ("", "0"):
        args.dry = True
    args.device = args.device or ("cpu" if args.dry else "cuda")
    args.dtypes = [d for d in (args.dtypes or ("fp32" if args.dry else "fp16,bf16")).split(",") if d]
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
                    opt_steps=4, timeout=300.0)
    return dict(arch="sd15", mem_steps="25,50,100", full_steps="25", eval_steps=50, candidates=32, batch_size=32,
                opt_steps=50, timeout=240.0)


GPU_TEST_FILES = ("tests/test_key_bias.py", "tests/test_flow_long_prompts.py")  # gpu tests outside test_gpu.py


def plan(args: argparse.Namespace, work: Path) -> list[Step]:
    py, sz = args.python, sizes(args.dry)
    results = work / "gpu_tests.jsonl"
    pytest_marks = "not slow" if args.dry else "gpu"  # dry: the CPU variant of the GPU test's measurement
    # Every file with @pytest.mark.gpu tests (the dry run keeps test_gpu.py's CPU variants only: the others are the
    # CPU suite's own tests there).
    files = ["tests/test_gpu.py"] if args.dry else ["tests/test_gpu.py", *GPU_TEST_FILES]
    steps = [Step("pytest -m gpu", [py, "-m", "pytest", *files, "-q", "-m", pytest_marks, "-rs",
                                    "-p", "no:cacheprovider"], sz["timeout"],
                  env={"DPO_DIFF_GPU_RESULTS": str(results), "HF_HUB_OFFLINE": "1"})]
    for dtype in args.dtypes:
        steps.append(Step(f"shortcut_memory {dtype}", [
            py, "benchmarks/shortcut_memory.py", "--arch", sz["arch"], "--device", args.device, "--dtype", dtype,
            "--steps", sz["mem_steps"], "--full-steps", sz["full_steps"], "--json", str(work / f"memory_{dtype}.json"),
        ], sz["timeout"] / 2))
        steps.append(Step(f"eval_throughput {dtype}", [
            py, "benchmarks/eval_throughput.py", "--arch", sz["arch"], "--device", args.device, "--dtype", dtype,
            "--steps", str(sz["eval_steps"]), "--candidates", str(sz["candidates"]),
            "--batch-size", str(sz["batch_size"]), "--json", str(work / f"throughput_{dtype}.json"),
        ], sz["timeout"]))
    dtype = args.dtypes[0]
    model, judge, space = work / "model", work / "judge", work / "spaces.json"
    steps.append(Step("save random model", [
        py, str(Path(__file__).resolve()), "--save-model", str(model), "--arch", sz["arch"], "--dtype", dtype,
        "--device", args.device, "--judge", str(judge), "--space", str(space),
    ], sz["timeout"] / 2))
    steps.append(Step(f"optimize hybrid {dtype}", [
        py, "-m", "dpo_diff.cli", "optimize", "--prompt", PROMPT, "--task", "improve", "--space", str(space),
        "--model", str(model), "--judge", str(judge), "--method", "hybrid", "--budget", "40",
        "--steps", str(sz["opt_steps"]), "--dtype", dtype, "--device", args.device, "--seeds", "0",
        "--report-seeds", "100", "--batch-size", str(sz["batch_size"]), "--out", str(work / "optimize"),
        "--overwrite", "--quiet",
    ], sz["timeout"], env={"HF_HUB_OFFLINE": "1"}))
    steps.append(Step(f"optimize mf {dtype}", [  # multi-fidelity: few-step previews batched on the device
        py, "-m", "dpo_diff.cli", "optimize", "--prompt", PROMPT, "--task", "improve", "--space", str(space),
        "--model", str(model), "--judge", str(judge), "--method", "mf", "--budget", "40",
        "--steps", str(sz["opt_steps"]), "--dtype", dtype, "--device", args.device, "--seeds", "0",
        "--report-seeds", "100", "--batch-size", str(sz["batch_size"]), "--out", str(work / "optimize_mf"),
        "--overwrite", "--quiet",
    ], sz["timeout"], env={"HF_HUB_OFFLINE": "1"}))
    for arch, mode in BIG_ARCHS.items():  # full shapes in bf16 on a GPU (fp16 overflows them); tiny models in dry mode
        mem = ["--steps", "4,8", "--full-steps", "4", "--dtype", "fp32"] if args.dry else [
            "--steps", "50", "--full-steps", "", "--dtype", "bf16", "--size", "full"]
        mem += ["--grad-checkpointing"] if mode.endswith("+ckpt") else []
        steps.append(Step(f"shortcut_memory {arch}", [
            py, "benchmarks/shortcut_memory.py", "--arch", arch, "--device", args.device, *mem,
            "--json", str(work / f"memory_{arch}.json")], sz["timeout"] * 0.75))
    return steps


def run_steps(steps: list[Step], deadline: float, work: Path) -> None:
    start = time.monotonic()
    for i, step in enumerate(steps):
        left = deadline - (time.monotonic() - start)
        if left < 10:
            step.status = "skipped (deadline)"
            continue
        if step.name.startswith("optimize") and steps[i - 1].status != "ok":
            step.status = "skipped (no model)"
            continue
        print(f"== {step.name}: {shlex.join(step.argv)}", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(step.argv, cwd=ROOT, env={**os.environ, **step.env}, capture_output=True,
                                  text=True, timeout=min(step.timeout, left))
            step.log = proc.stdout + proc.stderr
            step.status = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
        except subprocess.TimeoutExpired as e:
            step.log = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            step.status = "timeout"
        step.seconds = time.monotonic() - t0
        (work / f"log_{i:02d}.txt").write_text(step.log)
        print(f"   {step.status} in {step.seconds:.1f} s", flush=True)
        if step.status != "ok":
            print("   " + "\n   ".join(step.log.strip().splitlines()[-15:]), flush=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(work: Path, dtypes: list[str]) -> dict:
    """Numbers for the summary, per dtype (missing ones stay None)."""
    out: dict = {d: {} for d in dtypes}
    lines = (work / "gpu_tests.jsonl").read_text().splitlines() if (work / "gpu_tests.jsonl").exists() else []
    for line in lines:
        row = json.loads(line)
        if row.get("check") == "gpo_iteration" and row.get("dtype") in out:
            out[row["dtype"]][f"gpo_peak_{row['preset']}"] = row["peak_bytes"]
        if row.get("check") in ("oom_retry", "fp16_overflow") and row.get("dtype") in out:  # recovery checks
            out[row["dtype"]][row["check"]] = row["ok"]
    for d in dtypes:
        mem = _read_json(work / f"memory_{d}.json") or {}
        rows = {(r["mode"], r["steps"]): r for r in mem.get("rows", [])}
        if ("shortcut", 50) in rows:
            out[d]["shortcut50_peak"] = rows["shortcut", 50]["peak_bytes"]
            out[d]["shortcut50_s"] = rows["shortcut", 50]["seconds"]
        short = sorted(s for m, s in rows if m == "shortcut")
        if len(short) >= 2:
            lo, hi = rows["shortcut", short[0]], rows["shortcut", short[-1]]
            out[d]["saved_ratio"] = hi["saved_bytes"] / max(lo["saved_bytes"], 1)
        thr = _read_json(work / f"throughput_{d}.json") or {}
        out[d]["batched_ratio"] = thr.get("ratio")
        out[d]["hybrid_s"] = thr.get("hybrid_s")
        out[d]["gpo_chunk1_ratio"] = thr.get("gpo_chunk1_ratio")
        out[d]["gpo_batched_ratio"] = thr.get("gpo_batched_ratio")
    if dtypes:  # the flow backbones run in bf16 only: their numbers go to that column
        col = "bf16" if "bf16" in out else dtypes[0]
        for arch, mode in BIG_ARCHS.items():
            rows = {r["steps"]: r for r in (_read_json(work / f"memory_{arch}.json") or {}).get("rows", [])
                    if r["mode"] == mode}
            out[col][f"{arch}_peak"] = rows[max(rows)]["peak_bytes"] if rows else None
    res = _read_json(work / "optimize" / "result.json") or {}
    res_mf = _read_json(work / "optimize_mf" / "result.json") or {}
    if dtypes:
        out[dtypes[0]]["cli_hybrid_s"] = res.get("search_seconds")
        out[dtypes[0]]["cli_mf_s"] = res_mf.get("search_seconds")
    return out


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
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
    if isinstance(value, bool):
        return "PASS" if value == target else "FAIL"
    return "PASS" if (value >= target if higher_is_better else value <= target) else "FAIL"


def summary(numbers: dict, steps: list[Step], dry: bool) -> str:
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
        ("hybrid, budget 40, one prompt (benchmark)", "hybrid_s", "s", TARGETS["hybrid_s"], False),
        ("hybrid, budget 40, `dpo-diff optimize` search time", "cli_hybrid_s", "s", TARGETS["hybrid_s"], False),
        ("mf, budget 40, `dpo-diff optimize` search time", "cli_mf_s", "s", TARGETS["hybrid_s"], False),
        ("SDXL GPO iteration peak, 1024 px, grad checkpointing (benchmark)", "sdxl_peak", "gb",
         TARGETS["sdxl_peak_gb"] * GIB, False),
        ("SD 3.5 medium GPO iteration peak, 1024 px (benchmark)", "sd3_peak", "gb", TARGETS["sd3_peak_gb"] * GIB,
         False),
        ("FLUX.1-dev GPO iteration peak, 1024 px, true CFG (benchmark)", "flux_peak", "gb",
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
    lines += ["", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in steps]
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--save-model"]:
        save_random_model(argv)
        return 0
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_suite_"))
    work.mkdir(parents=True, exist_ok=True)
    steps = plan(args, work)
    if args.plan:
        for s in steps:
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            print(f"{s.name}: {(env + ' ') if env else ''}{shlex.join(s.argv)}  (timeout {s.timeout:.0f} s)")
        return 0
    (work / "gpu_tests.jsonl").unlink(missing_ok=True)
    t0 = time.monotonic()
    run_steps(steps, args.deadline, work)
    table = summary(collect(work, args.dtypes), steps, args.dry)
    mode = "dry run on the CPU" if args.dry else f"device {args.device}"
    report = (f"# GPU suite\n\nMade by `scripts/gpu_suite.sh{' --dry' if args.dry else ''}` ({mode}; "
              f"{environment()}; {time.strftime('%Y-%m-%d')}; {time.monotonic() - t0:.0f} s in all). SD v1.x "
              f"architecture at 512 px with random weights{' (dry: the tiny model instead)' if args.dry else ''}.\n\n"
              f"{table}\n")
    out = Path(args.out) if args.out else (work / "gpu.md" if args.dry else ROOT / "docs" / "gpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print("\n" + table + f"\n\nreport: {out}\nlogs: {work}")
    return 0 if all(s.status == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
