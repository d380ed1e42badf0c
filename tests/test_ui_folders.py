"""The web app's run folder: nothing outside it is ever read, whatever links a run or benchmark folder holds, and
every run gets a folder of its own."""

import json
import threading
import zipfile

import pytest
from PIL import Image

from dpo_diff.ui import folders, jobs
from dpo_diff.ui.controller import Controller, UserMessage
from dpo_diff.ui.jobs import JobManager, Models, RunRequest

SECRET = b"outside bytes: never in a download"


@pytest.fixture
def layout(tmp_path):
    """``root/run`` (a finished run's files) and, outside ``root``, a secret file, folder, image and run."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "run").mkdir(parents=True)
    (root / "run" / "config.json").write_text("{}")
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "folder" / "inner.txt").write_bytes(SECRET)
    Image.new("RGB", (4, 4), "red").save(outside / "secret.png")
    (outside / "run").mkdir()
    (outside / "run" / "config.json").write_text("{}")
    (outside / "run" / "result.json").write_text(json.dumps({"leaked": True}))
    return root, outside


def controller(root, runner):
    """A shapes-world controller whose runs are ``runner`` (no model is loaded)."""
    return Controller(root, Models(None, None, "cpu"), JobManager(root, runner=runner, loader=lambda m, s: None))


def zip_contents(archive):
    with zipfile.ZipFile(archive) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_the_zip_leaves_out_links_to_outside_files_and_folders(layout):
    root, outside = layout
    run = root / "run"
    (run / "notes.txt").write_text("mine")
    (run / "file_link").symlink_to(outside / "secret.txt")
    (run / "folder_link").symlink_to(outside / "folder")
    (run / "dangling").symlink_to(outside / "gone.txt")
    (run / "sub").mkdir()
    (run / "sub" / "deep_link").symlink_to(outside / "secret.txt")
    (run / "inside_link").symlink_to(run / "notes.txt")  # stays inside the run folder: kept
    got = zip_contents(folders.zip_folder(root, "run"))
    assert sorted(got) == ["config.json", "inside_link", "notes.txt"]
    assert all(SECRET not in blob for blob in got.values())


def test_a_link_planted_at_the_zips_name_is_replaced_not_written_through(layout):
    root, outside = layout
    (root / folders.DOWNLOADS).mkdir()
    (root / folders.DOWNLOADS / "run.zip").symlink_to(outside / "secret.txt")
    archive = folders.zip_folder(root, "run")
    assert not archive.is_symlink() and zip_contents(archive) == {"config.json": b"{}"}
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert not [p for p in (root / folders.DOWNLOADS).iterdir() if p.name.endswith(".tmp")]


def test_a_downloads_folder_linked_outside_is_refused(layout):
    root, outside = layout
    (root / folders.DOWNLOADS).symlink_to(outside / "folder")
    with pytest.raises(folders.OutsideRootError):
        folders.zip_folder(root, "run")
    assert sorted(p.name for p in (outside / "folder").iterdir()) == ["inner.txt"]


def test_the_run_view_never_shows_files_behind_links_out(layout):
    root, outside = layout
    run = root / "run"
    (run / "comparison.png").symlink_to(outside / "secret.png")
    (run / "result.json").symlink_to(outside / "run" / "result.json")
    (run / "best.json").symlink_to(outside / "run" / "result.json")
    view = folders.run_view(root, "run")
    assert view["image"] is None and view["markdown"] == "unfinished run (no result.json)"
    # A link to an image inside the run folder is shown, by its real path.
    Image.new("RGB", (4, 4), "blue").save(run / "mine.png")
    (run / "comparison.png").unlink()
    (run / "comparison.png").symlink_to(run / "mine.png")
    assert folders.run_view(root, "run")["image"] == (run / "mine.png").resolve()


def test_a_whole_run_linked_from_outside_is_neither_listed_nor_opened(layout):
    root, outside = layout
    (root / "linked_run").symlink_to(outside / "run")
    assert folders.list_runs(root) == ["run"]
    with pytest.raises(folders.OutsideRootError):
        folders.zip_folder(root, "linked_run")
    c = controller(root, None)
    with pytest.raises(UserMessage, match="'linked_run' is outside the app's run folder"):
        c.run("linked_run")
    assert not (root / folders.DOWNLOADS / "linked_run.zip").exists()


def write_bench(folder, images):
    """A benchmark folder with one finished record whose best images are ``images`` (relative paths)."""
    folder.mkdir(parents=True)
    cfg = {"task": "improve", "budget": 4, "seeds": [0], "report_seeds": [5], "steps": 4, "guidance": 7.5,
           "model": "m", "judge": "j", "world": False, "methods": ["random"]}
    (folder / "bench.json").write_text(json.dumps({"config": cfg, "config_key": "k", "invocations": []}))
    rec = {"prompt": "a cat", "method": "random", "report_losses": [0.2], "search_losses": [0.2],
           "user_report_losses": [0.3], "user_search_losses": [0.3], "cost": 4, "seconds": 1.0,
           "history": [[4, 0.2]], "images": {"user": [], "best": images},
           "best": {"prompt": "a cat", "negative_prompt": "dog"}, "faithfulness": None}
    (folder / "results.jsonl").write_text(json.dumps(rec) + "\n")


def test_the_bench_view_refuses_a_benchmark_that_reaches_outside(layout):
    root, outside = layout
    write_bench(root / "bench_ok", [])
    assert "random" in folders.bench_view(root, "bench_ok")["markdown"]
    write_bench(root / "bench_link", [])
    (root / "bench_link" / "job").mkdir()
    (root / "bench_link" / "job" / "comparison.png").symlink_to(outside / "secret.png")
    write_bench(root / "bench_path", ["../../outside/secret.png"])  # a record naming an image outside
    for name, culprit in (("bench_link", "job/comparison.png"), ("bench_path", "../../outside/secret.png")):
        with pytest.raises(folders.OutsideRootError, match=f"reaches outside.*{culprit}"):
            folders.bench_view(root, name)
        assert not (root / name / "report.html").exists()  # refused before the report copied anything


def test_a_comparison_linked_outside_is_not_shown_while_polling(layout):
    root, outside = layout

    def runner(job, loaded):  # a run whose comparison grid was swapped for a link out
        job.out.mkdir(parents=True, exist_ok=True)
        (job.out / "comparison.png").symlink_to(outside / "secret.png")
        (job.out / "secret.txt").symlink_to(outside / "secret.txt")
        return {"cost": 1.0, "cancelled": False, "best": {"prompt": "a cat"}, "user_prompt": "a cat",
                "before": {}, "after": {}, "task": "improve", "method": "random", "budget": 1.0, "evaluated": 1}

    c = controller(root, runner)
    job_id = c.start(RunRequest("a green orb", budget=1), None)
    for _ in range(3000):
        view = c.poll(job_id)
        if view.done:
            break
        threading.Event().wait(0.01)
    assert view.status.startswith("**finished**") and view.comparison is None
    assert all(SECRET not in blob for blob in zip_contents(view.download).values())


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs.time, "strftime", lambda fmt: "20260101-120000")  # every start in the same second
    release = threading.Event()

    def runner(job, loaded):
        release.wait(30)
        return {"cost": 1.0, "cancelled": False}

    c = controller(tmp_path, runner)
    outs = [c.jobs.get(c.start(RunRequest("a green orb", budget=1), None)).out for _ in range(3)]
    release.set()
    assert [p.name for p in outs] == ["20260101-120000-a-green-orb", "20260101-120000-a-green-orb_2",
                                      "20260101-120000-a-green-orb_3"]
    assert all(p.is_dir() for p in outs)
    # A refused run reserves nothing.
    with pytest.raises(UserMessage, match="budget must be a positive number"):
        c.start(RunRequest("a green orb", budget=-1), None)
    assert not (tmp_path / "20260101-120000-a-green-orb_4").exists()
