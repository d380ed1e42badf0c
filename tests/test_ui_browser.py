"""``dpo-diff ui`` in a real headless browser (Playwright driving the system Chromium; no browser download).

One app on the bundled shapes world serves every test of this module: the page loads offline, a smoke search runs
to its images, a long search shows progress and is cancelled, bad input shows the CLI's message, past runs and
benchmarks are browsable, and files outside the run folder are refused.
Set DPO_DIFF_UI_SCREENSHOT=docs/img/ui.png to save the README's screenshot of the finished smoke run.
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install "
                                                          "chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("gradio", reason="gradio is not installed (pip install 'dpo-diff[ui]')")

WAIT_MS = 120_000  # an upper bound for a slow machine, not a measurement: every wait ends on a page change


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from dpo_diff.ui.app import build_app, launch
    from dpo_diff.ui.controller import Controller
    from dpo_diff.ui.jobs import Models, RunRequest

    root = tmp_path_factory.mktemp("ui") / "runs"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(root / ".gradio"))
        controller = Controller(root, Models(None, None, "cpu"))
        app = build_app(controller, RunRequest("a green orb", budget=6, steps=10, report_seeds="100"))
        _, url, share_url = launch(app, root, block=False)
        yield {"url": url, "share": share_url, "root": root.resolve(), "controller": controller}
        controller.jobs.shutdown()
        app.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page with the network cut off: any request that is not to the app fails, and is recorded."""
    context = browser.new_context(viewport={"width": 1000, "height": 1400})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.outside = []

    def route(r):
        if r.request.url.startswith(server["url"]):
            return r.continue_()
        pg.outside.append(r.request.url)
        return r.abort()

    pg.route("**/*", route)
    pg.goto(server["url"])
    pg.wait_for_selector("#prompt textarea")
    yield pg
    context.close()


def text_of(pg, selector: str) -> str:
    return pg.inner_text(selector)


def wait_text(pg, selector: str, needle: str) -> None:
    pg.wait_for_function("([s, n]) => (document.querySelector(s)?.innerText || '').includes(n)",
                         arg=[selector, needle])


def fill_form(pg, prompt: str, **fields: str) -> None:
    pg.fill("#prompt textarea", prompt)
    for name, value in fields.items():
        pg.fill(f"#{name} input, #{name} textarea", value)


def choose(pg, dropdown: str, option: str) -> None:
    pg.click(f"#{dropdown} input")
    pg.get_by_role("option", name=option, exact=True).click()


def test_the_app_loads_offline_on_localhost_without_a_share_link(server, page):
    assert server["url"].startswith("http://127.0.0.1:") and server["share"] is None
    assert page.title() == "dpo-diff" and "shapes-world" in text_of(page, "body")
    assert page.outside == []  # no fonts, scripts or analytics from the network


def test_a_smoke_search_runs_to_its_images(server, page):
    fill_form(page, "a green orb", budget="6", seeds="0", report_seeds="100", steps="10")
    page.click("#build")
    wait_text(page, "#space_info", "candidates")
    text = page.input_value("#space textarea")
    assert "green [antonym]: white, red" in text
    page.fill("#space textarea", text.replace("white, red", "red, cyan"))  # remove a substitute, add one
    page.click("#start")
    wait_text(page, "#status", "finished")
    status = text_of(page, "#status")
    assert "cost 6 of budget 6" in status and "best loss" in status
    result = text_of(page, "#result")
    assert "loss, held-out seeds" in result and "faithful (ground truth), held-out seeds" in result
    page.wait_for_function("document.querySelector('#comparison img')?.naturalWidth > 0")
    page.wait_for_function("document.querySelector('#live img')?.naturalWidth > 0")
    assert ".zip" in text_of(page, "#download")
    run = next(p for p in server["root"].iterdir() if (p / "result.json").is_file())
    import json

    config = json.loads((run / "config.json").read_text())
    green = next(s for s in config["space"]["slots"] if s["word"] == "green" and s["target"] == "negative")
    assert green["options"][:3] == ["", "red", "cyan"]  # the edited space was searched
    if os.environ.get("DPO_DIFF_UI_SCREENSHOT"):
        save_screenshot(page, Path(os.environ["DPO_DIFF_UI_SCREENSHOT"]))


def save_screenshot(pg, path: Path) -> None:
    """A small PNG for the README (a 64-colour palette keeps it a few tens of kB)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(pg.screenshot(full_page=True))).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(64).save(path, optimize=True)


def test_a_long_search_shows_progress_and_cancel_keeps_the_best_so_far(server, page):
    # Far more work than the test waits for: it ends by the cancel, never by the budget.
    fill_form(page, "a big purple circle in the center", budget="5000", seeds="0", report_seeds="100",
              steps="10")
    page.check("#task input[value='attack']")
    choose(page, "method", "random")
    page.click("#start")
    wait_text(page, "#status", "best loss")  # the search is running and has scored candidates
    status = text_of(page, "#status")
    assert "running" in status and "of budget 5000" in status
    page.wait_for_function("document.querySelector('#live img')?.naturalWidth > 0")  # best-so-far images
    assert "best so far" in text_of(page, "#best")
    page.click("#cancel")
    wait_text(page, "#status", "cancelled")
    assert "the best so far is kept" in text_of(page, "#status")
    assert "cancelled" in text_of(page, "#result") and "loss, held-out seeds" in text_of(page, "#result")
    page.wait_for_function("document.querySelector('#comparison img')?.naturalWidth > 0")


def test_bad_input_shows_the_clis_message(page):
    for prompt, fields, message in [
        ("hello there", {}, "no substitutable words in 'hello there'"),
        ("", {}, "--prompt is empty; give the text you want to generate"),
        ("a green orb", {"seeds": "0,0"}, "repeats a seed; each seed must appear once"),
    ]:
        fill_form(page, prompt, **fields)
        page.click("#start")
        wait_text(page, "#message", message)
        assert "Traceback" not in text_of(page, "body")


def test_past_runs_and_benchmarks_are_browsable(server, page):
    from test_report import write_folder

    write_folder(server["root"] / "bench", {"user": [1.0, 0.8], "epo": [0.9, 0.7]})
    page.get_by_role("tab", name="Past runs").click()
    page.click("#run_refresh")
    page.click("#run_pick input")
    page.get_by_role("option").first.click()
    wait_text(page, "#run_result", "loss, held-out seeds")
    page.wait_for_function("document.querySelector('#run_comparison img')?.naturalWidth > 0")
    page.get_by_role("tab", name="Benchmarks").click()
    page.click("#bench_refresh")
    choose(page, "bench_pick", "bench")
    wait_text(page, "#bench_tables", "epo")
    page.wait_for_function("document.querySelector('#bench_curves img')?.naturalWidth > 0")


def test_the_page_cannot_read_files_outside_the_run_folder(server, page):
    inside = next(server["root"].rglob("comparison.png"), None)
    outside = Path(__file__).resolve()
    if inside is not None:
        assert page.request.get(f"{server['url']}gradio_api/file={inside}").status == 200
    assert page.request.get(f"{server['url']}gradio_api/file={outside}").status in (403, 404)
    assert page.request.get(f"{server['url']}gradio_api/file={server['root']}/../x").status in (403, 404)
