"""Append-only record files that survive bad lines, and one writer per output (two real processes)."""

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest

from dpo_diff.bench.report import analyse, markdown
from dpo_diff.bench.results import append_record, load_records
from dpo_diff.cli import main
from dpo_diff.files import FileWarning, OutputLockedError, append_jsonl, output_lock, read_jsonl

BAD_LINES = {
    "blank": "",
    "cut-off": '{"prompt": "a half-written rec',
    "garbage": "<<<not json>>>",
    "not a record": "[1, 2, 3]",
    "missing keys": '{"prompt": "p", "method": "user"}',
}


def record(i: int, method: str = "user") -> dict:
    loss = 0.5 + i / 10
    return {"prompt": f"prompt {i}", "method": method, "report_losses": [loss], "search_losses": [loss],
            "user_report_losses": [loss], "user_search_losses": [loss], "cost": 0, "seconds": 1.0, "history": [],
            "images": {"user": [], "best": []}, "best": {"prompt": f"prompt {i}", "negative_prompt": ""},
            "faithfulness": None}


def write_bench(out, bad: str, where: str) -> list[str]:
    """A benchmark folder with three records and one bad line at ``where``; returns the file's lines."""
    out.mkdir()
    cfg = {"task": "improve", "budget": 4, "seeds": [0], "report_seeds": [5], "steps": 4, "guidance": 7.5,
           "methods": ["user"]}
    (out / "bench.json").write_text(json.dumps({"config": cfg, "config_key": "k", "invocations": []}))
    lines = [json.dumps(record(i)) for i in range(3)]
    lines.insert({"start": 0, "middle": 2, "end": 3}[where], bad)
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    return lines


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_a_bad_line_anywhere_is_skipped_with_its_line_number(tmp_path, kind, where):
    out = tmp_path / "b"
    lines = write_bench(out, BAD_LINES[kind], where)
    bad_no = lines.index(BAD_LINES[kind]) + 1
    with pytest.warns(FileWarning, match=rf"skipped 1 unreadable line.*line {bad_no} \("):
        records = load_records(out)
    assert [r["prompt"] for r in records] == ["prompt 0", "prompt 1", "prompt 2"]  # nothing after it is lost
    with pytest.warns(FileWarning):
        data = analyse(out)
    assert data.prompts == ["prompt 0", "prompt 1", "prompt 2"]
    assert f"1 unreadable line(s) of results.jsonl skipped: line {bad_no}" in markdown(data)
    # Appending never rewrites a finished record: the file only grows.
    before = (out / "results.jsonl").read_bytes()
    append_record(out, record(3))
    assert (out / "results.jsonl").read_bytes().startswith(before)
    with pytest.warns(FileWarning):
        assert len(load_records(out)) == 4


def test_an_append_after_a_cut_off_last_line_starts_a_new_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b": [1, 2')  # a kill in the middle of a write
    append_jsonl(path, {"a": 3})
    assert path.read_text() == '{"a": 1}\n{"a": 2, "b": [1, 2\n{"a": 3}\n'
    with pytest.warns(FileWarning, match=r"line 2 \(not valid JSON\)"):
        got = read_jsonl(path)
    assert got.records == [{"a": 1}, {"a": 3}] and [s.line for s in got.skipped] == [2]
    # A complete last record without its newline is kept, and the next append does not glue onto it.
    path.write_text('{"a": 1}')
    append_jsonl(path, {"a": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path).records == [{"a": 1}, {"a": 2}]


def test_many_bad_lines_make_one_short_warning(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(["junk"] * 30 + ['{"a": 1}']) + "\n")
    with pytest.warns(FileWarning) as caught:
        got = read_jsonl(path)
    assert len(caught) == 1 and "and 20 more" in str(caught[0].message) and got.records == [{"a": 1}]


def test_report_cli_says_how_many_lines_it_skipped(tmp_path, capsys):
    out = tmp_path / "b"
    write_bench(out, "garbage", "middle")
    with open(out / "results.jsonl", "a") as f:
        f.write("\n")
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 unreadable line(s) of results.jsonl skipped: line 3 (not valid JSON), line 5 (blank)" in captured.out
    assert "dpo-diff: warning:" in captured.err and "Traceback" not in captured.err


# ------------------------------------------------------------------------------------------------ one writer

HOLD = """
import sys
from dpo_diff.files import output_lock
with output_lock(sys.argv[1], is_file=sys.argv[2] == "file", command="dpo-diff holder"):
    print("locked", flush=True)
    sys.stdin.read()
"""


class Holder:
    """Another process holding the lock of ``target`` until ``release()`` (or until it is killed)."""

    def __init__(self, target, is_file=False):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), "file" if is_file else "folder"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    holder = Holder(out)
    try:
        with pytest.raises(OutputLockedError, match=rf"process {holder.proc.pid} \(dpo-diff holder"):
            with output_lock(out):
                pass
    finally:
        holder.release()
    with output_lock(out):  # free again once the holder is done
        pass


def test_a_killed_holder_frees_the_lock(tmp_path):
    out = tmp_path / "run"
    holder = Holder(out)
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=30)
    with output_lock(out):  # the OS dropped the dead process's lock; its stale owner note is replaced
        assert json.loads((out / ".dpo-diff.lock.owner").read_text())["pid"] == os.getpid()


def test_a_refused_first_run_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            raise RuntimeError("failed before writing anything")
    assert not out.exists()


@pytest.mark.parametrize("command", ["bench", "optimize", "space build"])
def test_every_writing_command_refuses_a_busy_output(tmp_path, capsys, command):
    from dpo_diff.space import save_spaces, space_from_substitutes

    prompt = "a red dog"
    spaces = tmp_path / "s.json"
    save_spaces([space_from_substitutes(prompt, None, {"red": ["blue"]})], spaces)
    (tmp_path / "p.txt").write_text(prompt + "\n")
    out = tmp_path / ("spaces.json" if command == "space build" else "out")
    argv = {
        "bench": ["bench", "--prompts", str(tmp_path / "p.txt"), "--spaces", str(spaces), "--model", "m",
                  "--device", "cpu", "--out", str(out)],
        "optimize": ["optimize", "--prompt", prompt, "--space", str(spaces), "--model", "m", "--device", "cpu",
                     "--out", str(out)],
        "space build": ["space", "build", "--prompt", prompt, "--kind", "nplib", "--out", str(out)],
    }[command]
    holder = Holder(out, is_file=command == "space build")
    try:
        assert main(argv) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert f"is being written by process {holder.proc.pid}" in err and "Traceback" not in err
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == [".dpo-diff.lock"]  # nothing else written
