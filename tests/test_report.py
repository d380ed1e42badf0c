import json
import math
import re
import shutil
import subprocess
import sys

import pytest

from dpo_diff.bench.report import analyse, write_report
from dpo_diff.bench.stats import best_so_far_curve, summarize, t975, win_rate
from dpo_diff.cli import main


def test_stats():
    assert round(t975(1), 3) == 12.706 and round(t975(10), 3) == 2.228 and round(t975(35), 3) == 2.030
    assert round(t975(10**6), 2) == 1.96 and math.isnan(t975(0))
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0) and s.ci95 == pytest.approx(4.303 / 3**0.5, rel=1e-4)
    assert s.fmt() == "2.0000 ± 1.0000" and summarize([0.5]).fmt() == "0.5000" and summarize([0.5]).fmt_ci() == "-"
    assert win_rate([0.1, 0.5, 0.3], [0.2, 0.5, 0.1], sign=1) == pytest.approx(0.5)  # win, tie, loss
    assert win_rate([0.1, 0.5, 0.3], [0.2, 0.5, 0.1], sign=-1) == pytest.approx(0.5)
    curve = best_so_far_curve([[1, 0.9], [2, 0.95], [3, 0.7]], 0.8, [0, 1, 2, 3, 4], sign=1)
    assert curve == [0.8, 0.8, 0.8, 0.7, 0.7]


def write_folder(out, per_method, faith=None, task="improve", timed=()):
    """A benchmark folder written by hand: ``per_method[m][i]`` is prompt i's mean report loss; the methods in
    ``timed`` carry the wall-clock fields (found at 2 s of a 3 s search), the others are records of older versions."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"task": task, "budget": 4, "seeds": [0], "report_seeds": [5], "steps": 4, "guidance": 7.5,
           "model": "m", "judge": "j", "world": faith is not None, "methods": list(per_method)}
    (out / "bench.json").write_text(json.dumps({"config": cfg, "config_key": "k", "invocations": []}))
    user = per_method["user"]
    lines = []
    for m, losses in per_method.items():
        for i, loss in enumerate(losses):
            rec = {"prompt": f"prompt {i}", "method": m, "report_losses": [loss], "search_losses": [loss],
                   "user_report_losses": [user[i]], "user_search_losses": [user[i]], "cost": 0 if m == "user" else 4,
                   "seconds": 1.0, "history": [] if m == "user" else [[4, loss]], "images": {"user": [], "best": []},
                   "best": {"prompt": f"prompt {i}", "negative_prompt": ""}, "faithfulness": None}
            if m in timed:
                rec.update(search_seconds=3.0, timings={"evaluation": 2.5, "rerank": 0.5},
                           time_history=[[2.0, loss]])
            if faith is not None:
                rec["faithfulness"] = {"user": {"all_correct": faith["user"][i]}, "best": {"all_correct": faith[m][i]}}
            lines.append(json.dumps(rec))
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_tables_from_known_numbers(tmp_path):
    out = write_folder(tmp_path / "b", {"user": [1.0, 0.8, 0.9], "epo": [0.9, 0.8, 0.7], "hybrid": [0.8, 0.7, 0.7]},
                       faith={"user": [0.0, 1.0, 0.0], "epo": [1.0, 1.0, 0.0], "hybrid": [1.0, 1.0, 1.0]})
    data = analyse(out)
    rows = {r.method: r for r in data.rows}
    assert data.methods == ["user", "epo", "hybrid"]
    assert rows["epo"].delta.mean == pytest.approx(-0.1) and rows["epo"].improved == pytest.approx(2 / 3)
    assert rows["hybrid"].loss.mean == pytest.approx(0.7333333) and rows["user"].delta.mean == 0
    assert data.wins["epo"]["user"] == pytest.approx(2.5 / 3) and data.wins["hybrid"]["epo"] == pytest.approx(2.5 / 3)
    assert rows["hybrid"].faithful.mean == 1.0 and rows["epo"].faithful_delta.mean == pytest.approx(1 / 3)
    assert rows["epo"].cost == 4 and rows["user"].cost == 0
    paths = write_report(out)
    md = paths["markdown"].read_text()
    assert "| hybrid | 0.7333 ± 0.0577 |" in md and "faithful" in md and "+33.3 pt" in md
    assert "| epo | 83% | · | 17% |" in md  # the win-rate row of epo
    # Attack: higher loss wins.
    att = analyse(write_folder(tmp_path / "a", {"user": [0.5, 0.5], "epo": [0.6, 0.4]}, task="attack"))
    assert {r.method: r.improved for r in att.rows}["epo"] == 0.5


def test_report_shows_the_budget_and_the_wall_clock_view(tmp_path):
    out = write_folder(tmp_path / "b", {"user": [1.0, 0.8], "epo": [0.9, 0.6], "hybrid": [0.8, 0.7]},
                       timed=("user", "epo", "hybrid"))
    data = analyse(out)
    grid, epo = data.time_curves["epo"]
    assert grid[0] == 0 and grid[-1] == 3.0  # up to the slowest search
    assert epo[0] == pytest.approx(0.9) and epo[-1] == pytest.approx(0.75)  # the user prompt until 2 s, then found
    assert epo[grid.index(1.5)] == pytest.approx(0.9) and data.time_curves["user"][1] == [0.9] * len(grid)
    assert data.curves["epo"][1][-1] == pytest.approx(0.75)  # the same answer on the cost axis
    paths = write_report(out)
    md = paths["markdown"].read_text()
    assert "| method | cost (gen) | search s | s / gen | gpo_gradient s | evaluation s | rerank s | job s |" in md
    assert "| epo | 4.0 | 3.0 | 0.75 | 0.0 | 2.5 | 0.5 | 1.0 |" in md and "| user | 0.0 | 3.0 | - |" in md
    assert "No time curve" not in md and "Left out" not in md
    assert paths["time_curves"].stat().st_size > 10_000 and paths["curves"].stat().st_size > 10_000
    page = paths["html"].read_text()
    assert "id='time-curves'" in page and "id='curves'" in page and 'id="budget-views"' in page


def test_report_of_records_without_seconds_keeps_the_budget_view(tmp_path):
    old = write_folder(tmp_path / "old", {"user": [1.0, 0.8], "epo": [0.9, 0.6]})  # written by an older version
    paths = write_report(old)
    md = paths["markdown"].read_text()
    assert "| epo | 4.0 | - | - | - | - | - | 1.0 |" in md and "No time curve" in md
    assert "time_curves" not in paths and not (old / "curves_time.png").exists() and "curves" in paths
    assert "id='time-curves'" not in paths["html"].read_text()
    # Old and new records in one folder: the time view shows the methods it can place on the clock.
    mixed = analyse(write_folder(tmp_path / "mixed", {"user": [1.0, 0.8], "epo": [0.9, 0.6], "gpo": [0.7, 0.7]},
                                 timed=("gpo",)))
    assert sorted(mixed.time_curves) == ["gpo", "user"] and sorted(mixed.curves) == ["epo", "gpo", "user"]
    assert "Left out of the time curve" in write_report(mixed.out)["markdown"].read_text()


def test_report_compares_only_prompts_every_method_finished(tmp_path, capsys):
    out = write_folder(tmp_path / "b", {"user": [1.0, 0.8, 0.9], "epo": [0.9, 0.8, 0.7]})
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # epo has not finished prompt 2 yet
    data = analyse(out)
    assert data.prompts == ["prompt 0", "prompt 1"] and data.incomplete == 1
    assert main(["report", str(out), "--methods", "user,gpo"]) == 2
    assert "no results for method(s) ['gpo']" in capsys.readouterr().err


@pytest.mark.parametrize("setup, message", [("missing", "does not exist"), ("no_manifest", "holds no benchmark"),
                                            ("empty", "no finished job yet")])
def test_report_bad_input(tmp_path, capsys, setup, message):
    out = tmp_path / "b"
    if setup != "missing":
        out.mkdir()
    if setup == "empty":
        (out / "bench.json").write_text(json.dumps({"config": {"task": "improve"}}))
    assert main(["report", str(out)]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def bench_dir(tiny_sd, tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    prompts = root / "prompts.txt"
    prompts.write_text("a red dog on the grass\na small black car near a tall tree\n")
    out = root / "out"
    assert main(["bench", "--prompts", str(prompts), "--model", tiny_sd, "--judge", tiny_clip, "--methods",
                 "user,random,gpo", "--steps", "4", "--budget", "4", "--gpo-iterations", "2", "--seeds", "0",
                 "--report-seeds", "5,6", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_report_of_a_real_run_without_torch(bench_dir):
    code = ("import sys; from dpo_diff.cli import main; rc = main(['report', sys.argv[1]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code, str(bench_dir)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NO-TORCH 0")
    assert "| user | " in out.stdout and "| gpo | " in out.stdout
    page = (bench_dir / "report.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == 2 * 3 * 2  # prompts x (user + 2 methods) x seeds
    assert "id='curves'" in page and "id='time-curves'" in page and 'id="results"' in page
    assert not re.search(r"(src|href)=['\"](https?:|file:|/)", page)  # self-contained
    assert (bench_dir / "curves.png").stat().st_size > 10_000 and (bench_dir / "curves_time.png").is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_page_renders_in_headless_chromium(bench_dir, tmp_path):
    from PIL import Image

    page = bench_dir / "report.html"
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    assert len(set(img.resize((120, 160)).getdata())) > 50  # tables, curves and images, not a blank page
    # The same page with a probe that reports, after load, how many images decoded and what the table holds.
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
              "document.body.setAttribute('data-probe', JSON.stringify({n: imgs.length,"
              "ok: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
              "rows: document.querySelectorAll('#results tbody tr').length}));});</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", "--virtual-time-budget=5000", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, "the probe did not run"
    result = json.loads(m.group(1).replace("&quot;", '"'))
    assert result == {"n": 14, "ok": 14, "rows": 3}  # 12 grid images + the two curves; a row per method


def test_report_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as when the report extra is not installed
    out = write_folder(tmp_path / "bench", {"user": [0.5, 0.6], "random": [0.4, 0.5]}, timed=("random",))
    assert main(["report", str(out)]) == 0  # the tables stand without the curves
    err = capsys.readouterr().err
    assert "no curves" in err and "pip install 'dpo-diff[report]'" in err
    assert (out / "report.md").is_file() and not (out / "curves.png").exists()


def test_ground_truth_columns_attribute_accuracy_gaming_and_sparsity(tmp_path):
    """A dense answer that lowers the loss without a ground-truth gain counts as judge gaming; a sparse one that
    gains does not; attribute accuracy and the answers' changed words are in the table."""
    out = write_folder(tmp_path / "b", {"user": [1.0, 0.9], "random": [0.7, 0.6], "greedy": [0.8, 0.8]},
                       faith={"user": [0.0, 0.5], "random": [0.0, 0.5], "greedy": [1.0, 0.5]})
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in recs:
        dense = r["method"] == "random"
        r["best"]["changes"] = [f"-t{k}" for k in range(7 if dense else 1 if r["method"] == "greedy" else 0)]
        for who in ("user", "best"):
            r["faithfulness"][who]["attribute_accuracy"] = 0.8 if who == "user" or dense else 0.9
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = {r.method: r for r in analyse(out).rows}
    assert rows["random"].gamed == 2 and rows["greedy"].gamed == 1  # greedy's second prompt: loss down, truth not
    assert rows["greedy"].attribute_delta.mean == pytest.approx(0.1) and rows["random"].attribute_delta.mean == 0
    assert rows["random"].changes == 7 and rows["greedy"].changes == 1
    md = write_report(out)["markdown"].read_text()
    assert "judge gains without ground truth" in md and "| 2/2 |" in md and "+10.0 pt" in md
