"""The web app's logic without a browser: cancellation of a search, the job queue, the editable space, the run
folder's path safety and the controller's error messages."""

import json
import subprocess
import sys
import threading
import zipfile

import pytest

from dpo_diff.optimize import OptimizeConfig
from dpo_diff.search.api import search
from dpo_diff.space import SearchSpace, Slot, SpaceError
from dpo_diff.testing import SyntheticProblem, synthetic_space
from dpo_diff.ui import folders
from dpo_diff.ui.controller import Controller, UserMessage, status_line
from dpo_diff.ui.jobs import JobManager, Models, RunRequest, Snapshot, build_space
from dpo_diff.ui.space_text import space_to_text, text_to_space


# ---------------------------------------------------------------------------------------------- cancellation
@pytest.mark.parametrize("method", ["random", "epo", "hybrid", "mf", "tpe"])
def test_a_cancelled_search_stops_early_and_keeps_its_best(method):
    problem = SyntheticProblem(synthetic_space(6, 4), seed=2)
    seen = []
    result = search(problem, method=method, budget=200, seeds=(0,), on_evaluation=seen.append,
                    should_stop=lambda: len(seen) >= 3)
    assert result.extra["cancelled"] is True and "selection" not in result.extra  # no re-ranking after stop
    assert 3 <= len(result.evaluations) < 200 and result.cost < 200
    assert result.best.objective == min(e.objective for e in result.evaluations)


def test_a_search_cancelled_before_it_starts_still_answers():
    problem = SyntheticProblem(synthetic_space(6, 4), seed=2)
    result = search(problem, method="random", budget=200, seeds=(0,), should_stop=lambda: True)
    assert result.extra["cancelled"] and 1 <= len(result.evaluations) <= 8  # the first batch, nothing more


def test_an_uncancelled_search_says_nothing_about_cancelling():
    result = search(SyntheticProblem(synthetic_space(4, 3), seed=2), method="random", budget=12, seeds=(0,),
                    should_stop=lambda: False)
    assert "cancelled" not in result.extra and result.cost == 12


def world_config(tmp_path, **kw):
    from dpo_diff.world import generator_path, judge_path

    base = dict(prompt="a green orb", model=str(generator_path()), judge=str(judge_path()), method="random",
                budget=40, steps=4, report_seeds=(100,), similarity_threshold=None, out=str(tmp_path / "run"))
    return OptimizeConfig(**{**base, **kw})


def test_optimize_cancelled_writes_the_best_so_far_and_says_so(tmp_path):
    from dpo_diff.optimize import optimize
    from dpo_diff.world.spaces import world_space

    cfg = world_config(tmp_path)
    out = tmp_path / "run"
    result = optimize(cfg, space=world_space(cfg.prompt, "improve"), progress=False,
                      should_stop=lambda: (out / "best.json").exists())
    saved = json.loads((out / "result.json").read_text())
    assert saved["cancelled"] is True and result["cancelled"] is True
    assert 0 < saved["cost"] < 40 and (out / "comparison.png").is_file()
    best = json.loads((out / "best.json").read_text())
    assert saved["after"]["search_mean"] == pytest.approx(sum(best["losses"]) / len(best["losses"]), abs=1e-5) \
        or saved["note"]  # the best so far, unless it did not beat the user prompt


# ---------------------------------------------------------------------------------------------- job queue
class FakeRun:
    """A runner that writes progress as optimize does and waits to be released (or fails on request)."""

    def __init__(self):
        self.release = threading.Event()
        self.started = []
        self.loads = 0

    def loader(self, models, scheduler):
        self.loads += 1
        return ("backend", "judge", None)

    def __call__(self, job, loaded):
        self.started.append(job.id)
        if job.cfg.prompt.startswith("crash"):
            raise RuntimeError("the GPU fell over")
        job.out.mkdir(parents=True, exist_ok=True)
        ev = {"candidate": [1], "prompt": job.cfg.prompt, "negative_prompt": "blue", "losses": [0.25, 0.35],
              "objective": 0.3, "cost": 2.0}
        (job.out / "progress.jsonl").write_text(json.dumps(ev) + "\n{\"half a li")  # a line being written
        (job.out / "best.json").write_text(json.dumps(ev))
        while not self.release.wait(0.01):
            if job.cancel_event.is_set():
                return {"cost": 2.0, "cancelled": True}
        return {"cost": 4.0, "cancelled": False}


def wait_for(predicate, timeout=30.0):
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def submit(manager, tmp_path, prompt, device="cpu"):
    cfg = OptimizeConfig(prompt=prompt, model="m", budget=4, seeds=(0, 1), out=str(tmp_path / prompt))
    return manager.submit(cfg, SearchSpace(prompt), Models("m", None, device))


def test_jobs_run_one_at_a_time_per_device_and_report_progress(tmp_path):
    fake = FakeRun()
    manager = JobManager(tmp_path, runner=fake, loader=fake.loader)
    first, second = submit(manager, tmp_path, "one"), submit(manager, tmp_path, "two")
    wait_for(lambda: manager.snapshot(first.id).evaluations == 1)
    snap = manager.snapshot(first.id)
    assert (snap.state, snap.cost, snap.best_loss, snap.best_negative_prompt) == ("running", 2.0, 0.3, "blue")
    queued = manager.snapshot(second.id)
    assert queued.state == "queued" and queued.queue_position == 1 and fake.started == [first.id]
    other = submit(manager, tmp_path, "elsewhere", device="cuda:1")  # another device has its own worker
    wait_for(lambda: other.id in fake.started)
    fake.release.set()
    wait_for(lambda: manager.snapshot(second.id).done and manager.snapshot(first.id).done)
    assert [manager.snapshot(j.id).state for j in (first, second)] == ["finished", "finished"]
    assert manager.snapshot(first.id).cost == 4.0 and fake.loads == 2  # once per device, reused by the next job
    manager.shutdown()


def test_cancel_stops_a_running_job_and_a_queued_one_never_starts(tmp_path):
    fake = FakeRun()
    manager = JobManager(tmp_path, runner=fake, loader=fake.loader)
    running, queued = submit(manager, tmp_path, "one"), submit(manager, tmp_path, "two")
    wait_for(lambda: fake.started == [running.id])
    manager.cancel(queued.id)
    manager.cancel(running.id)
    wait_for(lambda: manager.snapshot(running.id).done)
    assert manager.snapshot(running.id).state == "cancelled" and manager.snapshot(queued.id).state == "cancelled"
    after = submit(manager, tmp_path, "three")
    fake.release.set()
    wait_for(lambda: manager.snapshot(after.id).done)
    assert fake.started == [running.id, after.id]
    manager.shutdown()


def test_a_crashed_job_shows_its_error_and_the_worker_goes_on(tmp_path):
    fake = FakeRun()
    fake.release.set()
    manager = JobManager(tmp_path, runner=fake, loader=fake.loader)
    crashed, fine = submit(manager, tmp_path, "crash"), submit(manager, tmp_path, "fine")
    wait_for(lambda: manager.snapshot(fine.id).done)
    snap = manager.snapshot(crashed.id)
    assert snap.state == "failed" and snap.error == "RuntimeError: the GPU fell over"
    assert status_line(snap) == "**failed**: RuntimeError: the GPU fell over"
    assert manager.snapshot(fine.id).state == "finished"
    manager.shutdown()


def test_status_line_shows_cost_of_budget_and_best_loss(tmp_path):
    snap = Snapshot(1, "running", tmp_path, 40.0, cost=12.0, evaluations=6, best_loss=0.2345)
    assert status_line(snap) == "**running** · cost 12 of budget 40 · best loss 0.2345 · 6 evaluations"
    assert status_line(Snapshot(2, "queued", tmp_path, 4.0, queue_position=2)) == "**queued** (2 run(s) ahead)"
    mf = Snapshot(3, "running", tmp_path, 40.0, cost=9.0, evaluations=4, previews=25, best_loss=0.3)
    assert status_line(mf) == "**running** · cost 9 of budget 40 · best loss 0.3000 · 4 evaluations · 25 previews"


def test_progress_counts_full_evaluations_and_previews_apart(tmp_path):
    from dpo_diff.ui.jobs import read_progress

    rows = [{"cost": 0.2, "fidelity": "steps:4"}, {"cost": 0.4, "fidelity": "steps:4"}, {"cost": 1.4},
            {"cost": 2.4, "fidelity": "full"}]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cost": 3')
    assert read_progress(tmp_path) == (2.4, 2, 2, None)


# ---------------------------------------------------------------------------------------------- editable space
def space():
    return SearchSpace("a red dog", (Slot("positive", "dog", ("dog", "hound", "puppy"), 2, "synonym"),
                                     Slot("negative", "red", ("", "blue", "green"), 1, "antonym")))


def test_space_text_round_trips_and_edits():
    text = space_to_text(space())
    assert text == "1. dog [synonym]: hound, puppy\n2. red [antonym]: blue, green"
    assert text_to_space(text, space()).slots == space().slots
    edited = text_to_space("1. dog [synonym]: hound, canine\n2. red [antonym]: green", space())
    assert edited.slots[0].options == ("dog", "hound", "canine") and edited.slots[1].options == ("", "green")
    assert [s.word for s in text_to_space("2. red [antonym]: blue", space()).slots] == ["red"]  # line deleted


@pytest.mark.parametrize("text, message", [
    ("3. cat [synonym]: kitten", "names no slot of the space"),
    ("dog: hound", "names no slot of the space"),
    ("1. dog [synonym]: hound\n1. dog [synonym]: puppy", "names no slot of the space"),
])
def test_space_text_errors_name_the_line(text, message):
    with pytest.raises(SpaceError, match=message):
        text_to_space(text, space())


# ---------------------------------------------------------------------------------------------- run folder
def test_paths_outside_the_run_folder_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "run" / "config.json").write_text("{}")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "config.json").write_text("{}")
    (root / "link").symlink_to(tmp_path / "secret")
    for bad in ("..", "../secret", "/etc", "run/../../secret", "link"):
        with pytest.raises(folders.OutsideRootError):
            folders.safe_path(root, bad)
    assert folders.safe_path(root, "run") == (root / "run").resolve()
    assert folders.list_runs(root) == ["run"]  # not the folder behind the link
    with pytest.raises(folders.OutsideRootError):
        folders.zip_folder(root, "../secret")
    archive = folders.zip_folder(root, "run")
    assert root.resolve() in archive.parents and zipfile.ZipFile(archive).namelist() == ["config.json"]


# ---------------------------------------------------------------------------------------------- controller
WORLD = Models(None, None, "cpu")


def test_controller_shows_the_clis_messages(tmp_path):
    c = Controller(tmp_path, WORLD, JobManager(tmp_path, runner=FakeRun(), loader=FakeRun().loader))
    with pytest.raises(UserMessage, match="--prompt is empty; give the text you want to generate"):
        c.build("  ", "improve")
    with pytest.raises(UserMessage, match="no substitutable words in 'hello there'"):
        c.build("hello there", "improve")
    _, _, built = c.build("a green orb", "improve")
    cases = {"seeds": ("0,0", "repeats a seed"), "report_seeds": ("0", "report seeds must be held out"),
             "method": ("magic", "unknown method 'magic'"), "budget": (-1, "budget must be a positive number"),
             "proposal": ("dense", "unknown proposal 'dense'")}
    for name, (value, message) in cases.items():
        with pytest.raises(UserMessage, match=message):
            c.start(RunRequest("a green orb", **{name: value}), built)
    with pytest.raises(UserMessage, match="names no slot"):
        c.start(RunRequest("a green orb", space_text="9. cat [synonym]: dog"), built)
    assert not c.jobs._jobs  # nothing was queued by the refused runs
    for act in (c.poll, c.cancel):
        with pytest.raises(UserMessage, match="no job 7"):
            act(7)  # e.g. a page left open across a restart


def test_controller_runs_the_edited_space(tmp_path):
    fake = FakeRun()
    fake.release.set()
    c = Controller(tmp_path, WORLD, JobManager(tmp_path, runner=fake, loader=fake.loader))
    text, _, built = c.build("a green orb", "improve")
    assert "4. green [antonym]: white, red" in text
    edited = text.replace("white, red", "red, cyan")
    job_id = c.start(RunRequest("a green orb", budget=6, steps=10, space_text=edited), built)
    job = c.jobs.get(job_id)
    assert job.space.slots[3].options[:3] == ("", "red", "cyan") and job.cfg.steps == 10
    assert job.out.parent == tmp_path.resolve() and job.cfg.similarity_threshold is None
    assert job.cfg.proposal.kind == "uniform"  # the paper's, unless the page asks for sparse edits
    sparse = c.jobs.get(c.start(RunRequest("a green orb", method="greedy", proposal="sparse"), built))
    assert sparse.cfg.proposal.kind == "sparse" and sparse.cfg.method == "greedy"
    # A space built for another prompt is rebuilt for this one; its edits do not apply.
    other = c.jobs.get(c.start(RunRequest("a big red square", space_text=edited), built))
    assert other.space.prompt == "a big red square" and other.space == build_space("a big red square", "improve",
                                                                                   WORLD)


def test_the_apps_jobs_take_each_tasks_defaults_unless_the_page_names_them(tmp_path):
    fake = FakeRun()
    fake.release.set()
    c = Controller(tmp_path, WORLD, JobManager(tmp_path, runner=fake, loader=fake.loader))
    improve = c.jobs.get(c.start(RunRequest("a green orb", task="improve"), None))
    assert (improve.cfg.method, improve.cfg.proposal.kind) == ("greedy", "uniform")
    assert {s.target for s in improve.space.slots} == {"positive", "negative"}  # the hybrid space
    attack = c.jobs.get(c.start(RunRequest("a big purple circle in the center", task="attack"), None))
    assert (attack.cfg.method, attack.cfg.proposal.kind) == ("random", "uniform")
    assert {s.target for s in attack.space.slots} == {"positive"}  # synonym rewrites
    named = c.jobs.get(c.start(RunRequest("a green orb", method="random", proposal="sparse"), None))
    assert (named.cfg.method, named.cfg.proposal.kind) == ("random", "sparse")


def test_the_cli_and_the_job_layer_never_import_gradio():
    code = ("import sys; from dpo_diff.cli import build_parser; build_parser(); import dpo_diff.ui.controller; "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_enumerated_space_is_cancelled_between_batches():
    problem = SyntheticProblem(synthetic_space(2, 6), seed=2)  # 36 candidates: enumerated at budget 100
    seen = []
    result = search(problem, method="random", budget=100, seeds=(0,), on_evaluation=seen.append,
                    should_stop=lambda: len(seen) >= 1)
    assert result.extra["enumerated"] and result.extra["cancelled"] and len(result.evaluations) == 8


def test_the_ui_command_serves_the_app_on_localhost(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'dpo-diff[ui]')")
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dpo_diff.cli", "ui", "--runs", str(tmp_path / "runs"),
                             "--port", str(port), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert "shapes-world on cpu" in proc.stdout.readline()
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as page:
                    assert json.loads(page.read())["title"] == "dpo-diff"
                break
            except OSError:
                threading.Event().wait(0.1)
        else:
            raise AssertionError("the app did not answer")
        assert (tmp_path / "runs").is_dir()
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_ui_command_checks_its_arguments(capsys):
    from dpo_diff.cli import main

    assert main(["ui", "--judge", "openai/clip-vit-base-patch32"]) == 2
    assert "--judge needs --model" in capsys.readouterr().err


def test_a_run_on_a_model_folder_with_the_wordnet_space(tmp_path, tiny_sd, tiny_clip):
    c = Controller(tmp_path, Models(tiny_sd, tiny_clip, "cpu"))
    text, info, built = c.build("a red dog on the grass", "improve")
    assert "[antonym]" in text and tiny_sd in info
    job_id = c.start(RunRequest("a red dog on the grass", method="random", budget=3, steps=4, report_seeds="5"),
                     built)
    wait_for(lambda: c.poll(job_id).done, timeout=600)
    view = c.poll(job_id)
    assert view.status.startswith("**finished**") and "cost 3 of budget 3" in view.status
    assert "loss, held-out seeds" in view.result and "faithful" not in view.result  # no ground truth here
    assert view.comparison.is_file() and view.download.suffix == ".zip"
    config = json.loads((c.jobs.get(job_id).out / "config.json").read_text())["config"]
    assert (config["model"], config["judge"], config["similarity_threshold"]) == (tiny_sd, tiny_clip, 0.9)
    c.jobs.shutdown()
