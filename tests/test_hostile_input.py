"""Bad input is refused before any model loads, with one clear line, and leaves nothing behind (issue 26, items
3-8). Each row: the command line, a fragment the message must hold, and (checked for every row) that the command
exits 2, prints no traceback and writes nothing.

The model folders in these rows do not exist: a refusal that came after loading would name the missing model
instead of the bad input.
"""

import json
import math
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import CLI_PROMPT
from dpo_diff.cli import main

NO_MODEL = "no/such/model-folder"


def optimize(*extra):
    return ["optimize", "--prompt", CLI_PROMPT, "--space", "{space}", "--model", NO_MODEL, "--judge", NO_MODEL,
            "--steps", "8", "--guidance", "7.5", "--budget", "4", "--out", "{out}", "--device", "cpu", "--quiet",
            *extra]


def bench(*extra):
    return ["bench", "--prompts", "{prompts}", "--model", NO_MODEL, "--judge", NO_MODEL, "--steps", "8",
            "--guidance", "7.5", "--budget", "4", "--methods", "user,random", "--out", "{out}", "--device", "cpu",
            *extra]


CASES = [
    # 3. numbers: finite and in range
    ("guidance-nan", optimize("--guidance", "nan"), r"--guidance must be a finite number.*got nan"),
    ("guidance-inf", optimize("--guidance", "inf"), r"--guidance must be a finite number.*got inf"),
    ("guidance-negative", optimize("--guidance", "-2"), r"--guidance must be a finite number >= 0.*got -2"),
    ("budget-inf", optimize("--budget", "inf"), r"budget must be a positive number"),
    ("time-budget-inf", optimize("--time-budget", "inf"), r"time budget must be a finite positive"),
    ("similarity-nan", optimize("--similarity-threshold", "nan"), r"similarity.threshold must be in \[0, 1\]"),
    ("mf-share-nan", optimize("--method", "mf", "--mf-screen-share", "nan"),
     r"screen_share must be in \(0, 1\), got nan"),
    ("tpe-keep-inf", optimize("--method", "tpe", "--tpe-keep", "inf"), r"keep must be in \(0, 1\], got inf"),
    ("llm-temperature-nan", optimize("--method", "llm", "--llm-model", "m", "--llm-temperature", "nan"),
     r"temperature must be in \[0, 2\], got nan"),
    ("bench-guidance-nan", bench("--guidance", "nan"), r"--guidance must be a finite number.*got nan"),
    ("bench-budget-nan", bench("--budget", "nan"), r"budget must be a positive number"),
    ("ray-cpus-nan", bench("--ray", "--ray-cpus-per-job", "nan"), r"--ray-cpus-per-job must be a finite number > 0"),
    ("ray-retries-negative", bench("--ray", "--retries", "-1"), r"--retries must be at least 0, got -1"),
    # 4. a negative prompt needs classifier-free guidance
    ("improve-without-cfg", optimize("--task", "improve", "--guidance", "1"),
     r"--task improve searches negative prompts.*guidance.*above 1.*got 1"),
    ("bench-improve-without-cfg", bench("--task", "improve", "--guidance", "0.5"),
     r"--task improve searches negative prompts.*guidance.*above 1"),
    # 5. seeds: bounded lists, values the generator takes
    ("seed-range-huge", optimize("--seeds", "0-100000000"), r"seed list '0-100000000' has 100000001 seeds; at most"),
    ("seed-too-large", optimize("--seeds", str(2**63)), r"seed 9223372036854775808 is too large.*at most"),
    ("report-seed-too-large", optimize("--report-seeds", "1," + "9" * 30), r"seed 9{30} is too large"),
    ("bench-seed-range-huge", bench("--report-seeds", "10-99999999"), r"has 99999990 seeds; at most"),
    ("validation-seed-too-large", optimize("--validation-seeds", str(2**70)), r"is too large"),
    # 6. the LLM endpoint's limits are flags of optimize and bench as of space build
    ("llm-timeout-zero", optimize("--method", "llm", "--llm-model", "m", "--llm-timeout", "0"),
     r"--llm-timeout must be a positive number of seconds"),
    ("llm-attempts-zero", optimize("--method", "llm", "--llm-model", "m", "--llm-attempts", "0"),
     r"--llm-attempts must be at least 1"),
    ("llm-deadline-nan", bench("--methods", "user,llm", "--llm-model", "m", "--llm-deadline", "nan"),
     r"--llm-deadline must be a positive number of seconds"),
    ("llm-missing-key", optimize("--method", "llm", "--llm-model", "gpt-4o", "--llm-api-key-env", "DPO_DIFF_NO_KEY"),
     r"the LLM endpoint https://api.openai.com/v1 needs an API key, but \$DPO_DIFF_NO_KEY is not set"),
    # 7. no silent rewrites of what was asked for
    ("mf-ladder-over-100", optimize("--method", "mf", "--mf-ladder", "steps:200%,full"),
     r"--mf-ladder: steps:200% is 16 steps, not fewer than the full sampler's 8"),
    ("mf-ladder-empty", optimize("--method", "mf", "--mf-ladder", ""), r"the fidelity ladder is empty"),
    ("mf-ladder-seeds", optimize("--method", "mf", "--mf-ladder", "steps:2@99,full"),
     r"--mf-ladder: steps:2@99 scores on 99 search seeds, but the search has 1"),
    ("tpe-ladder-full-steps", bench("--methods", "user,tpe", "--tpe-ladder", "steps:8,full"),
     r"--tpe-ladder: steps:8 is 8 steps, not fewer than the full sampler's 8"),
    ("objective-weight-word", optimize("--objective", "clip:J=abc"),
     r"term 'clip:J=abc': the weight after = must be a number"),
    ("select-judge-checker", optimize("--select-judge", "checker"),
     r"the checker is the shapes world's ground truth, never a selection judge"),
    ("select-judge-without-rerank", optimize("--select-judge", "clip:world:judge_b", "--rerank-top", "0"),
     r"selection judges \['clip:world:judge_b'\] score the re-ranking's images, but re-ranking is off.*--rerank-top"),
    ("select-judge-bad-kind", bench("--select-judge", "bogus:x"), r"unknown judge kind 'bogus' in 'bogus:x'"),
    ("select-judge-twice", bench("--select-judge", "clip:a", "--select-judge", "clip:a"),
     r"selection judges name \['clip:a'\] twice"),
    # 8. the right words
    ("space-is-a-directory", optimize("--space", "{dir}"), r"is a directory, not a space file"),
    ("bench-spaces-is-a-directory", bench("--spaces", "{dir}"), r"is a directory, not a space file"),
    ("world-negative-count", bench("--prompts", "world:hard:-3"),
     r"'world:hard:-3': use world:<easy\|hard>:<n>\[:<seed>\]"),
    ("world-bogus-kind", bench("--prompts", "world:bogus:5"), r"'world:bogus:5': use world:<easy\|hard>"),
    ("report-of-a-file", ["report", "{prompts}"], r"is a file, not a benchmark folder"),
    ("optimize-out-is-a-file", optimize("--out", "{prompts}"), r"output folder '.*prompts.txt' is a file"),
    ("bench-out-under-a-file", bench("--out", "{prompts}/run"),
     r"output folder '.*prompts.txt/run' cannot be created: '.*prompts.txt' is a file"),
    ("space-build-out-dir", ["space", "build", "--prompt", "a red dog", "--out", "{dir}"],
     r"--out .* is a directory; give a JSON file"),
    ("space-build-out-unwritable", ["space", "build", "--prompt", "a red dog", "--out", "{prompts}/x.json"],
     r"--out .*cannot be written"),
    ("select-out-dir", ["select", "--prompts", "{prompts}", "--model", NO_MODEL, "--judge", NO_MODEL, "--out",
                        "{dir}"], r"--out .* is a directory; give a JSON file"),
    ("space-build-not-utf8", ["space", "build", "--prompts", "{latin1}", "--out", "{out}/s.json"],
     r"prompt file '.*latin1.txt' is not UTF-8 text"),
    ("bench-not-utf8", bench("--prompts", "{latin1}"), r"prompt file '.*latin1.txt' is not UTF-8 text"),
]


@pytest.fixture()
def places(tmp_path, space_file):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(CLI_PROMPT + "\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("un caf\u00e9 rouge\n".encode("latin-1"))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    return {"space": space_file, "prompts": str(prompts), "latin1": str(latin1), "dir": str(folder),
            "out": str(tmp_path / "out")}


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_in_one_line_and_writes_nothing(name, argv, message, places, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("DPO_DIFF_NO_KEY", raising=False)
    argv = [a.format(**places) for a in argv]
    before = _snapshot(tmp_path)
    assert main(argv) == 2, name
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("dpo-diff")]
    assert len(lines) == 1 and re.search(message, lines[0]), (message, err)
    assert NO_MODEL not in err  # refused before the (missing) model was looked up
    assert _snapshot(tmp_path) == before  # nothing written, not even an empty output folder


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_a_run_writes_is_strict(tiny_sd, tiny_clip, space_file, tmp_path):
    """NaN/Infinity are not JSON: config.json, result.json, best.json, search.json, progress.jsonl, spaces and the
    bench's files must parse with a strict parser (search.json's history starts before the first evaluation)."""
    out = tmp_path / "run"
    assert main(["optimize", "--prompt", CLI_PROMPT, "--space", space_file, "--model", tiny_sd, "--judge",
                 tiny_clip, "--steps", "4", "--budget", "4", "--method", "gpo", "--gpo-iterations", "2",
                 "--report-seeds", "5", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text(CLI_PROMPT + "\n")
    assert main(["bench", "--prompts", str(prompts), "--model", tiny_sd, "--judge", tiny_clip, "--methods",
                 "user,random", "--steps", "4", "--budget", "2", "--report-seeds", "5", "--device", "cpu", "--out",
                 str(tmp_path / "bench")]) == 0
    checked = 0
    for path in sorted(tmp_path.rglob("*.json*")):
        text = path.read_text()
        rows = text.splitlines() if path.suffix == ".jsonl" else [text]
        for row in rows:
            _strict(row)
        checked += 1
    assert checked >= 10
    history = _strict((out / "search.json").read_text())["history"]
    assert all(loss is None or math.isfinite(loss) for _, loss in history)


def test_web_app_keeps_zero_steps(tmp_path):
    """The web app passes 0 steps on (refused as any run's would be) instead of turning it into 50."""
    from dpo_diff.ui.jobs import Models, RunRequest, make_config
    from dpo_diff.world.spaces import world_space

    world = Models(None, None, "cpu")
    space = world_space("a green orb", "improve")
    with pytest.raises(ValueError, match="steps must be >= 2, got 0"):
        make_config(RunRequest("a green orb", steps=0), world, tmp_path / "run", space)
    cfg, _ = make_config(RunRequest("a green orb", steps=None), world, tmp_path / "run", space)
    assert cfg.steps == 50  # left empty: the recommended number


@contextmanager
def endpoint(listening: bool):
    """An LLM endpoint URL on 127.0.0.1: ``listening`` accepts connections and never answers, else nobody listens
    (a closed port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if listening:
            sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        if not listening:
            sock.close()
        yield url


def test_a_closed_port_fails_in_seconds_naming_the_endpoint(monkeypatch):
    from dpo_diff.lexicons.base import LexiconError
    from dpo_diff.lexicons.llm import LLMLexicon

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    waits = []
    with endpoint(listening=False) as url:
        lex = LLMLexicon("m", base_url=url, cache_dir=False, max_attempts=5, timeout=60, sleep=waits.append)
        with pytest.raises(LexiconError, match=f"cannot connect to the LLM endpoint {re.escape(url)}"):
            lex.substitutes("a red car", "antonym")
    assert sum(waits) <= 1.0 and lex.requests_made == 2  # one quick retry, not 5 attempts with 30 s of backoff


def test_an_endpoint_that_never_answers_meets_the_total_deadline(monkeypatch):
    from dpo_diff.lexicons.base import LexiconError
    from dpo_diff.lexicons.llm import LLMLexicon

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with endpoint(listening=True) as url:
        lex = LLMLexicon("m", base_url=url, cache_dir=False, max_attempts=50, timeout=0.4, deadline=1.0,
                         sleep=lambda s: None)
        t0 = time.monotonic()
        with pytest.raises(LexiconError, match=f"{re.escape(url)}.*within the deadline of 1 s"):
            lex.substitutes("a red car", "antonym")
    assert time.monotonic() - t0 < 4.0


def test_optimize_llm_takes_the_endpoint_limits(tiny_sd, tiny_clip, space_file, tmp_path, capsys, monkeypatch):
    """--llm-timeout and --llm-attempts reach the search: a silent endpoint fails the run in seconds, named."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with endpoint(listening=True) as url:
        t0 = time.monotonic()
        rc = main(["optimize", "--prompt", CLI_PROMPT, "--space", space_file, "--model", tiny_sd, "--judge",
                   tiny_clip, "--method", "llm", "--llm-model", "m", "--llm-base-url", url, "--llm-timeout", "0.3",
                   "--llm-attempts", "2", "--steps", "4", "--budget", "4", "--report-seeds", "5", "--out",
                   str(tmp_path / "run"), "--quiet", "--device", "cpu"])
        seconds = time.monotonic() - t0
    assert rc == 2
    err = capsys.readouterr().err
    assert url in err and "no answer within 0.3 s (--llm-timeout)" in err and "after 2 attempts" in err, err
    assert seconds < 60
