import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dpo_diff.bench.results import load_records, without_wall_clock
from dpo_diff.cli import main
from dpo_diff.space import load_spaces
from dpo_diff.testing import assert_close_records

PROMPTS = ["a red dog on the grass", "a big happy cat", "a small black car near a tall tree"]
METHODS = "user,promptist,random,epo,gpo,hybrid"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from dpo_diff.baselines.promptist import save_tiny_rewriter

    return str(save_tiny_rewriter(tmp_path_factory.mktemp("models") / "gpt2"))


@pytest.fixture()
def prompts_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    return str(f)


def bench_args(tiny_sd, tiny_clip, prompts, out, *extra, methods="user,epo"):
    return ["bench", "--prompts", prompts, "--model", tiny_sd, "--judge", tiny_clip, "--methods", methods,
            "--steps", "4", "--budget", "4", "--gpo-iterations", "2", "--seeds", "0", "--report-seeds", "5,6",
            "--device", "cpu", "--out", str(out), *extra]


def with_out(args, out):
    args = list(args)
    args[args.index("--out") + 1] = str(out)
    return args


def numbers(records):
    """Records without wall times, keyed by (prompt, method): what must be identical between runs."""
    return {(r["prompt"], r["method"]): without_wall_clock(r) for r in records}


@pytest.fixture(scope="module")
def full_run(tiny_sd, tiny_clip, tiny_gpt2, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = root / "out"
    args = bench_args(tiny_sd, tiny_clip, str(prompts), out, "--promptist-model", tiny_gpt2, methods=METHODS)
    assert main(args) == 0
    return out, args


def test_every_method_on_every_prompt_at_equal_budget(full_run):
    out, _ = full_run
    records = load_records(out)
    assert sorted((r["prompt"], r["method"]) for r in records) == sorted(
        (p, m) for p in PROMPTS for m in METHODS.split(","))
    by = {(r["prompt"], r["method"]): r for r in records}
    for r in records:
        assert len(r["report_losses"]) == 2 and len(r["search_losses"]) == 1
        if r["method"] in ("user", "promptist"):
            assert r["cost"] == 0 and r["history"] == []
        else:
            assert 0 < r["cost"] <= 4 and r["budget"] == 4 and r["history"]
            # The wall-clock view beside the cost view: the same best loss, reached at elapsed search seconds.
            seconds = [t for t, _ in r["time_history"]]
            assert seconds == sorted(seconds) and 0 < seconds[-1] <= r["search_seconds"] <= r["seconds"]
            assert r["time_history"][-1][1] == pytest.approx(r["history"][-1][1]) and "evaluation" in r["timings"]
            # The method's answer (improve's hybrid space: negative terms and synonym swaps) is kept only if it beat
            # the user prompt on the search seeds.
            if (r["best"]["prompt"], r["best"]["negative_prompt"]) != (r["prompt"], ""):
                assert sum(r["search_losses"]) < sum(r["user_search_losses"])
        # Every job measures the user prompt on the same seeds: the same numbers as the 'user' job's.
        assert r["user_report_losses"] == pytest.approx(by[(r["prompt"], "user")]["report_losses"], abs=1e-5)
        for rel in r["images"]["user"] + r["images"]["best"]:
            assert (out / rel).is_file()
    rewrite = by[(PROMPTS[0], "promptist")]
    assert rewrite["extra"]["rewriter"]["num_beams"] == 8 and rewrite["best"]["prompt"]


def test_run_folder_records_config_versions_device_and_seeds(full_run):
    out, _ = full_run
    manifest = json.loads((out / "bench.json").read_text())
    assert manifest["config"]["seeds"] == [0] and manifest["config"]["report_seeds"] == [5, 6]
    assert manifest["config"]["budget"] == 4 and manifest["config"]["steps"] == 4
    inv = manifest["invocations"][0]
    assert {"torch", "diffusers", "transformers", "python"} <= set(inv["environment"])
    assert inv["device"] == "cpu" and inv["prompt_set"]["kept"] == 3
    spaces = json.loads((out / "spaces.json").read_text())
    assert len(spaces["spaces"] if "spaces" in spaces else spaces) == 3
    job_cfg = json.loads((out / "jobs" / load_records(out)[2]["prompt_id"] / "random" / "config.json").read_text())
    assert job_cfg["config"]["device"] == "cpu" and "torch" in job_cfg["environment"]


def test_rerun_skips_finished_work_and_same_command_gives_same_numbers(full_run, tmp_path, capsys):
    out, args = full_run
    before = (out / "results.jsonl").read_bytes()
    assert main(args) == 0
    assert (out / "results.jsonl").read_bytes() == before
    assert "18 already done, 0 to run" in capsys.readouterr().out
    again = tmp_path / "again"
    assert main(with_out(args, again)) == 0
    assert_close_records(numbers(load_records(again)), numbers(load_records(out)))


def test_bad_lines_never_truncate_the_results_and_only_their_jobs_run_again(full_run, tmp_path, capsys):
    out, args = full_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    results = copy / "results.jsonl"
    lines = results.read_text().splitlines()
    lost = json.loads(lines[5])
    lines[5] = lines[5][:40]  # a damaged record in the middle: its job must run again
    text = "\n".join(["", *lines[:3], "<garbage>", *lines[3:]]) + "\n"  # and a blank and a garbage line
    results.write_text(text)
    capsys.readouterr()
    assert main(with_out(args, copy)) == 0
    captured = capsys.readouterr()
    assert "skipped 3 unreadable line(s)" in captured.err and "line 1 (blank), line 5 (not valid JSON)" in captured.err
    assert "17 already done, 1 to run" in captured.out
    after = results.read_text()
    assert after.startswith(text)  # appended to: nothing before it truncated or rewritten
    new = [json.loads(line) for line in after[len(text):].splitlines()]
    assert [(r["prompt"], r["method"]) for r in new] == [(lost["prompt"], lost["method"])]
    assert_close_records(numbers(load_records(copy)), numbers(load_records(out)))


def test_more_methods_later_but_no_mixing_of_settings(tiny_sd, tiny_clip, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(bench_args(tiny_sd, tiny_clip, prompts_file, out, methods="user")) == 0
    assert main(bench_args(tiny_sd, tiny_clip, prompts_file, out, methods="user,gpo")) == 0  # adds gpo only
    assert len(load_records(out)) == 6
    capsys.readouterr()
    before = (out / "results.jsonl").read_bytes()
    assert main(bench_args(tiny_sd, tiny_clip, prompts_file, out, "--report-seeds", "5,7", methods="user")) == 2
    err = capsys.readouterr().err
    assert "different settings (report_seeds: [5, 6] -> [5, 7])" in err and "new --out folder" in err
    args = bench_args(tiny_sd, tiny_clip, prompts_file, out, methods="gpo")
    args[args.index("--gpo-iterations") + 1] = "3"
    assert main(args) == 2
    assert "different gpo settings (gpo.iterations: 2 -> 3)" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before  # nothing was touched


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "user,beam"], "unknown method"),
        (["--methods", "promptist", "--task", "attack"], "baseline for --task improve only"),
        (["--report-seeds", "0"], "held out"),
        (["--prompts", "missing.txt"], "does not exist"),
        (["--model", ""], "give --model"),
        (["--steps", "0"], "steps must be >= 2, got 0"),  # never silently replaced by the default
    ],
)
def test_bad_input(tiny_sd, tiny_clip, prompts_file, tmp_path, capsys, extra, message):
    args = bench_args(tiny_sd, tiny_clip, prompts_file, tmp_path / "out")
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_results_without_manifest_are_refused(tiny_sd, tiny_clip, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"prompt": "x", "method": "user"}\n')
    assert main(bench_args(tiny_sd, tiny_clip, prompts_file, out)) == 2
    assert "its settings are unknown" in capsys.readouterr().err


def test_a_killed_run_resumes_and_loses_nothing(tiny_sd, tiny_clip, tmp_path):
    prompts = tmp_path / "prompts.txt"
    many = [f"a {c} {s} near a tall tree" for c in ("red", "blue", "green") for s in ("car", "dog")]
    prompts.write_text("\n".join(many) + "\n")
    out = tmp_path / "killed"
    args = bench_args(tiny_sd, tiny_clip, str(prompts), out, methods="user,epo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dpo_diff.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.is_file() and results.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    survived = [line for line in results.read_text().splitlines() if line]
    assert 2 <= len(survived) < 12
    with results.open("a") as f:
        f.write('{"prompt": "a half-written rec')  # what a kill in the middle of an append leaves
    assert main(args) == 0
    lines = results.read_text().splitlines()
    assert lines[: len(survived)] == survived  # finished work is kept as it was
    records = load_records(out)
    assert len(records) == 12 and len({(r["prompt"], r["method"]) for r in records}) == 12
    reference = tmp_path / "reference"
    assert main(with_out(args, reference)) == 0
    # Resumed jobs evaluate candidates in other batch compositions: equal up to float rounding.
    assert_close_records(numbers(records), numbers(load_records(reference)))


def test_world_bench_measures_ground_truth_faithfulness(tmp_path):
    out = tmp_path / "world"
    args = ["bench", "--world", "--prompts", "world:hard:1", "--methods", "user,random", "--steps", "4",
            "--budget", "2", "--seeds", "0", "--report-seeds", "5,6", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    records = load_records(out)
    assert len(records) == 2
    for r in records:
        for who in ("user", "best"):
            assert 0 <= r["faithfulness"][who]["all_correct"] <= 1 and r["faithfulness"][who]["n"] == 2
    settings = json.loads((out / "bench.json").read_text())["settings"]
    assert settings["model"].startswith("sha256:")  # retrained world models must not mix with old results
    spaces = load_spaces(out / "spaces.json").values()  # improve's default: the world's hybrid space
    assert settings["space_kind"] == "hybrid" and {s.target for space in spaces for s in space.slots} == {
        "positive", "negative"}


def test_attack_with_a_spaces_file_and_the_meaning_constraint(tiny_sd, tiny_clip, tmp_path):
    from dpo_diff.space import save_spaces, space_from_substitutes

    spaces = tmp_path / "spaces.json"
    save_spaces([space_from_substitutes(PROMPTS[0], {"dog": ["hound", "puppy", "car"], "grass": ["lawn"]}, None)],
                spaces)
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    out = tmp_path / "attack"
    args = bench_args(tiny_sd, tiny_clip, str(prompts), out, "--task", "attack", "--spaces", str(spaces),
                      "--similarity-threshold", "0.8", methods="user,random")
    assert main(args) == 0
    by = {r["method"]: r for r in load_records(out)}
    assert by["random"]["best"]["negative_prompt"] == ""  # attacks rewrite the prompt itself
    if by["random"]["best"]["prompt"] != PROMPTS[0]:  # a rewrite is kept only if it raised the loss
        assert sum(by["random"]["search_losses"]) > sum(by["random"]["user_search_losses"])
    assert by["random"]["space_size"] == 4 * 2
    # MiniLM puts "a red car on the grass/lawn" below 0.8: both are rejected (free of budget), never evaluated.
    assert by["random"]["rejected_by_constraint"] == 2
    search = json.loads((out / "jobs" / by["random"]["prompt_id"] / "random" / "search.json").read_text())
    assert not [e for e in search["evaluations"] if "car" in e["prompt"]]
    missing = tmp_path / "other.txt"
    missing.write_text("a blue cat\n")
    assert main(bench_args(tiny_sd, tiny_clip, str(missing), tmp_path / "o2", "--task", "attack", "--spaces",
                           str(spaces), methods="user")) == 2


def test_dtype_auto_keeps_the_fp32_fingerprint_on_cpu(tiny_sd, tiny_clip):
    """Bench folders made when the default dtype was fp32 resume under the new default ``auto`` on a CPU."""
    from dpo_diff.bench.config import BenchConfig

    common = dict(model=tiny_sd, judge=tiny_clip, task="improve", device="cpu")
    auto, fp32 = BenchConfig(dtype="auto", **common), BenchConfig(dtype="fp32", **common)
    assert auto.keyed_settings() == fp32.keyed_settings()
    assert BenchConfig(dtype="fp16", **common).keyed_settings() != fp32.keyed_settings()
