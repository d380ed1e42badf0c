"""Benchmark job folders are named by a hash of their prompt; jobs/index.json says whose each one is."""

import json
import multiprocessing

from dpo_diff.bench.results import JOB_INDEX, JOBS, index_jobs, job_dir, read_job_index
from dpo_diff.cli import main


def test_a_bench_run_indexes_every_job_folder(tiny_sd, tiny_clip, tmp_path):
    prompts = ["a red dog on the grass", "a big happy cat"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "bench"
    assert main(["bench", "--prompts", str(tmp_path / "prompts.txt"), "--model", tiny_sd, "--judge", tiny_clip,
                 "--methods", "user,random", "--steps", "2", "--budget", "2", "--seeds", "0", "--report-seeds", "5",
                 "--device", "cpu", "--out", str(out)]) == 0
    index = json.loads((out / JOBS / JOB_INDEX).read_text())
    folders = {p.relative_to(out).as_posix() for p in (out / JOBS).glob("*/*") if p.is_dir()}
    assert set(index) == folders and len(folders) == 4
    jobs = {(p, m) for p in prompts for m in ("user", "random")}
    assert {(v["prompt"], v["method"]) for v in index.values()} == jobs
    for folder, job in index.items():
        assert folder == job_dir(job["prompt"], job["method"])


def _add(args):
    out, worker = args
    for i in range(10):
        index_jobs(out, [(f"prompt {worker}-{i}", "random"), (f"prompt {worker}-{i}", "epo")])


def test_concurrent_writers_never_drop_each_others_entries(tmp_path):
    index_jobs(tmp_path, [("an earlier prompt", "user")])
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_add, [(str(tmp_path), w) for w in range(4)])
    index = read_job_index(tmp_path)
    assert len(index) == 1 + 4 * 10 * 2 and index[job_dir("an earlier prompt", "user")]["method"] == "user"
    assert [p.name for p in (tmp_path / JOBS).iterdir() if p.suffix == ".tmp"] == []


def test_a_damaged_index_is_rebuilt(tmp_path):
    (tmp_path / JOBS).mkdir()
    (tmp_path / JOBS / JOB_INDEX).write_text('{"jobs/abc": ')  # e.g. edited by hand
    assert read_job_index(tmp_path) == {}
    index_jobs(tmp_path, [("a cat", "user")])
    assert read_job_index(tmp_path) == {job_dir("a cat", "user"): {"prompt": "a cat", "method": "user"}}
