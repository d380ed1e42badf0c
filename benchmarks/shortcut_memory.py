"""Memory and time of one GPO iteration: the shortcut text gradient against backprop through every step.

Prints, for 25, 50 and 100 sampling steps, the bytes autograd saves for the backward pass (measured with
``torch.autograd.graph.saved_tensors_hooks``), the wall time of one iteration (forward + backward), and on CUDA the
peak memory; then the ratios 100-step / 25-step (target for the shortcut: <= 1.05; the full gradient grows ~linearly).

    python benchmarks/shortcut_memory.py                       # tiny random SD on the CPU (seconds)
    python benchmarks/shortcut_memory.py --arch sd15 --device cuda --dtype fp16   # SD v1.x shapes, 512 px
    python benchmarks/shortcut_memory.py --arch sd3     # SD 3.x / FLUX.1 (--arch flux): tiny on the CPU, and
    python benchmarks/shortcut_memory.py --arch flux --device cuda --dtype bf16 --full-steps ''  # full size on CUDA
    python benchmarks/shortcut_memory.py --arch sdxl --grad-checkpointing   # SDXL: tiny on the CPU, and SDXL-base
    python benchmarks/shortcut_memory.py --arch sdxl --device cuda --dtype bf16 --steps 50 --full-steps '' \
        --grad-checkpointing      # shapes at 1024 px on CUDA (target: one GPO iteration <= 20 GB peak)

``--grad-checkpointing`` recomputes the grad-enabled denoiser calls and the decode in backward
(:func:`dpo_diff.shortcut.shortcut_images`); ``--compare-checkpointing`` measures the shortcut both ways.

``--json PATH`` also writes the rows as JSON (``scripts/gpu_suite.sh`` reads it).

Random weights are fine: costs do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def one_iteration(problem, steps: int, mode: str, checkpointing: bool = False) -> tuple[int, float, int]:
    from dpo_diff.relax import WordMixture
    from dpo_diff.shortcut import SavedTensorBytes

    problem.sampling = type(problem.sampling)(steps=steps, guidance_scale=7.5, grad_checkpointing=checkpointing)
    relaxed = problem.relaxation()
    mixture = WordMixture(problem.space.sizes)
    weights = mixture.sample_weights(1.0, torch.Generator().manual_seed(0))
    k = round(15 * steps / 50)
    dev = problem.backend.device
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with SavedTensorBytes() as counter:
        if mode == "shortcut":
            loss = relaxed(weights, (0,), start_step=k, grad_steps=1).mean()
        else:  # the full gradient: every step grad-enabled, decode the final latents
            loss = relaxed(weights, (0,), start_step=0, grad_steps=steps).mean()
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
    return counter.bytes, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", choices=("tiny", "sd15", "sdxl", "sd3", "flux"))
    parser.add_argument("--size", default=None, choices=("tiny", "full"),
                        help="sdxl/sd3/flux: tiny test model or full shapes (default: full on CUDA, tiny elsewhere)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="checkpoint the grad-enabled denoiser calls and the decode (shortcut and full modes)")
    parser.add_argument("--compare-checkpointing", action="store_true",
                        help="also run the shortcut with checkpointing toggled (mode 'shortcut+ckpt' or 'shortcut')")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--steps", default="25,50,100")
    parser.add_argument("--full-steps", default="25,50,100",
                        help="step counts for the full-gradient baseline ('' to skip; it needs ~1.45 GB/step at sd15)")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args()

    from dpo_diff.device import is_out_of_memory, release_memory
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.space import space_from_substitutes
    from dpo_diff.testing import random_backend, save_tiny_clip

    if args.arch in ("sd3", "flux"):
        from dpo_diff.testing_flow import random_flow_backend

        args.size = args.size or ("full" if args.device.startswith("cuda") else "tiny")
        backend = random_flow_backend(args.arch, args.device, args.dtype, args.size)
    elif args.arch == "sdxl":
        from dpo_diff.testing_sdxl import random_sdxl_backend

        args.size = args.size or ("full" if args.device.startswith("cuda") else "tiny")
        backend = random_sdxl_backend(args.device, args.dtype, args.size)
    else:
        backend = random_backend(args.arch, args.device, args.dtype)
    big = args.arch == "sd15" or args.size == "full"
    judge = ClipJudge.from_pretrained(str(save_tiny_clip(tempfile.mkdtemp(), image_size=224 if big
                                                            else 32)), device=args.device)
    space = space_from_substitutes("a red car on a snowy road", {"car": ["truck", "van"]},
                                   {"red": ["blue", "green"], "snowy": ["sunny", "dry"]})
    problem = Problem(space, Task("improve"), backend, judge, SamplingConfig())
    print(f"arch={args.arch} device={args.device} dtype={args.dtype}")
    print(f"{'mode':13s} {'steps':>5s} {'saved MB':>10s} {'seconds':>8s} {'peak MB':>9s}")
    results: dict[tuple[str, int], tuple[int, float, int]] = {}
    rows: list[dict] = []
    full_steps = [int(s) for s in args.full_steps.split(",") if s]
    ckpt = args.grad_checkpointing
    plan = [("shortcut", ckpt), *([("shortcut", not ckpt)] if args.compare_checkpointing else []), ("full", ckpt)]
    plan.sort(key=lambda p: p[1])  # checkpointed runs last: per-block checkpointing stays on once turned on
    # The warm-up (4 steps, the first mode) runs under the same out-of-memory guard as the measurements: a backbone
    # that does not fit then gives an "out of memory" row, not a crash without one.
    runs = [("warm-up", plan[0][1], 4, plan[0][0])] + [
        (mode + ("+ckpt" if c else ""), c, steps, mode) for mode, c in plan  # name e.g. "shortcut+ckpt"
        for steps in (full_steps if mode == "full" else [int(s) for s in args.steps.split(",")])]
    for name, checkpointing, steps, mode in runs:
        r, failed = None, False
        try:
            r = one_iteration(problem, steps, mode, checkpointing)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is a result; anything else is a bug
            if not is_out_of_memory(e):
                raise
            failed = True
        if failed:  # after the except block, whose traceback pins the failed iteration's activations
            release_memory()
            print(f"{name:13s} {steps:5d}   out of memory")
            rows.append({"mode": name, "steps": steps, "oom": True})
        elif name != "warm-up":
            results[name, steps] = r
            rows.append({"mode": name, "steps": steps, "saved_bytes": r[0], "seconds": r[1],
                         "peak_bytes": r[2] or None})
            print(f"{name:13s} {steps:5d} {r[0] / 2**20:10.1f} {r[1]:8.3f} {r[2] / 2**20:9.1f}")
        if args.json:  # after every row: a run cut off by a deadline keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"arch": args.arch, "device": args.device, "dtype": args.dtype, "size": args.size,
                           "rows": rows}, f, indent=1)
    for mode in dict.fromkeys(m for m, _ in results):
        steps = sorted(s for m, s in results if m == mode)
        if len(steps) >= 2:
            lo, hi = results[mode, steps[0]], results[mode, steps[-1]]
            print(f"{mode}: saved-bytes ratio {steps[-1]}/{steps[0]} steps = {hi[0] / lo[0]:.3f}, "
                  f"time ratio = {hi[1] / lo[1]:.2f}")
    suffix = "+ckpt" if ckpt else ""
    both = {s for m, s in results if m == "shortcut+ckpt"} & {s for m, s in results if m == "shortcut"}
    for s_steps in sorted(both):
        plain, low = results["shortcut", s_steps], results["shortcut+ckpt", s_steps]
        print(f"checkpointing at {s_steps} steps: saved bytes x{low[0] / plain[0]:.3f}, time x{low[1] / plain[1]:.2f}"
              + (f", peak x{low[2] / plain[2]:.3f}" if plain[2] else ""))
    if ("shortcut" + suffix, 50) in results and ("full" + suffix, 50) in results:
        s, f = results["shortcut" + suffix, 50], results["full" + suffix, 50]
        print(f"at 50 steps the shortcut saves {f[0] / s[0]:.1f}x less for backward and runs "
              f"{f[1] / s[1]:.1f}x faster")


if __name__ == "__main__":
    main()
