"""Ray scale-out on a local Ray instance with 2 workers (skipped when Ray is not installed)."""

import socket
import time

import numpy as np
import pytest
from PIL import Image

from dpo_diff.testing import assert_close_records

pytest.importorskip("ray")

from dpo_diff.bench.config import BenchConfig, BenchError  # noqa: E402
from dpo_diff.bench.results import load_records, without_wall_clock  # noqa: E402
from dpo_diff.bench.runner import RayOptions, run_bench  # noqa: E402

PROMPTS = ["a red dog on the grass", "a big happy cat", "a small black car near a tall tree"]


def config(tiny_sd, tiny_clip):
    return BenchConfig(task="improve", methods=("user", "epo", "gpo"), budget=4, seeds=(0,), report_seeds=(5, 6),
                       model=tiny_sd, judge=tiny_clip, steps=4, device="cpu",
                       gpo={"iterations": 2})


def test_ray_results_equal_a_local_run_and_failed_tasks_are_retried(tiny_sd, tiny_clip, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = config(tiny_sd, tiny_clip)
    local = tmp_path / "local"
    run_bench(cfg, str(prompts), local, log=lambda s: None)
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def flaky_job(cfg, job, workdir):
        # Runs in a Ray worker process. One job crashes once (as a lost GPU or OOM would) and is retried; another
        # crashes every time, which must stop the benchmark with the finished records kept.
        from dpo_diff.bench.jobs import run_job

        name = f"{job.method}-{PROMPTS.index(job.prompt)}"
        n = len(list(attempts.glob(name + ".*")))
        (attempts / f"{name}.{n}").touch()
        if name == "epo-1" and n == 0:
            raise RuntimeError(f"injected failure of {name}")
        if name == "gpo-2":
            deadline = time.monotonic() + 60  # fail once every other job is in: the outcome is then deterministic
            while time.monotonic() < deadline and len(load_records(remote)) < 8:
                time.sleep(0.1)
            raise RuntimeError(f"injected failure of {name}")
        return run_job(cfg, job, workdir)

    remote = tmp_path / "ray"
    lines = []
    # The job that fails after its retries is recorded and the benchmark goes on (keep-going by default).
    summary = run_bench(cfg, str(prompts), remote, ray=RayOptions(workers=2, retries=1), job_fn=flaky_job,
                        log=lines.append)
    assert [(f["prompt"], f["method"]) for f in summary.failed] == [("a small black car near a tall tree", "gpo")]
    assert "failed after 1 retries" in summary.failed[0]["error"] and "injected failure of gpo-2" in \
        summary.failed[0]["error"]
    assert any("ray: 2 CPUs" in s for s in lines) and any(s.startswith("[failed] gpo") for s in lines)
    assert len(list(attempts.glob("epo-1.*"))) == 2 and len(list(attempts.glob("gpo-2.*"))) == 2
    finished = load_records(remote)
    assert ("a big happy cat", "epo") in {(r["prompt"], r["method"]) for r in finished}  # the retried job
    assert len(finished) == 8
    # The same command without Ray finishes the rest into the same results file.
    summary = run_bench(cfg, str(prompts), remote, log=lambda s: None)
    assert summary.already_done == len(finished) and summary.ran == 9 - len(finished)
    # The same records (wall times aside) as a local run, in completion order instead of prompt order.
    got = {(r["prompt"], r["method"]): r for r in load_records(remote)}
    want = {(r["prompt"], r["method"]): r for r in load_records(local)}
    assert got.keys() == want.keys()
    for key, r in want.items():
        assert_close_records(without_wall_clock(got[key]), without_wall_clock(r))
        for rel in r["images"]["best"]:  # images travel back from the workers into the results folder
            a = np.asarray(Image.open(remote / rel), dtype=np.int16)
            b = np.asarray(Image.open(local / rel), dtype=np.int16)
            assert a.shape == b.shape and np.abs(a - b).max() <= 1  # float rounding may flip a pixel level


def test_unreachable_ray_address_fails_fast_and_leaves_nothing(tiny_sd, tiny_clip, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(BenchError, match=f"cannot reach the Ray cluster at '127.0.0.1:{port}'"):
        run_bench(config(tiny_sd, tiny_clip), str(prompts), out, ray=RayOptions(address=f"127.0.0.1:{port}"),
                  log=lambda s: None)
    assert time.monotonic() - t0 < 10
    assert not out.exists()
