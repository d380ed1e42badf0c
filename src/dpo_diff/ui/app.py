"""The Gradio layout of ``dpo-diff ui``: one page with three tabs (a new run, past runs, benchmarks).

All behaviour is in :class:`dpo_diff.ui.controller.Controller`; this module only wires widgets to it. Gradio is
imported here and nowhere else, so ``import dpo_diff`` and ``dpo-diff --help`` never pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dpo_diff.search import AUTO, PROPOSALS, per_task
from dpo_diff.ui.controller import Controller, RunView, UserMessage
from dpo_diff.ui.jobs import RunRequest

POLL_SECONDS = 1.0
# Small images (the shapes world's are 32 px) enlarged by the browser stay sharp instead of blurring.
CSS = "#live img, #comparison img, #run_comparison img, #bench_grids img { image-rendering: pixelated; }"


DEFAULTS = RunRequest("a green orb", steps=50)  # the run form's initial values (tests shrink them)


def offline_gradio() -> Any:
    """Import Gradio with everything that would reach the network at start turned off (analytics, version check)
    and its file cache inside the caller's run folder (set ``GRADIO_TEMP_DIR`` first)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
    import gradio as gr

    return gr


def task_default(field: str) -> tuple[str, str]:
    """The choice of a form field (method or proposal) that leaves it to the task of the run (one form, two tasks)."""
    return f"the task's ({per_task(field)})", AUTO


def error_text(e: Exception) -> str:
    return f"**error**: {e}"


def build_app(controller: Controller, defaults: RunRequest | None = None) -> Any:
    gr = offline_gradio()
    from dpo_diff.search import METHODS, NEEDS_ENDPOINT

    d = defaults or DEFAULTS
    with gr.Blocks(title="dpo-diff", analytics_enabled=False) as app:
        gr.Markdown(f"# dpo-diff\nDiscrete prompt optimization on **{controller.models.name}** "
                    f"({controller.models.device}); runs are written to `{controller.root.name}/`.")
        with gr.Tab("Run"):
            _run_tab(gr, controller, d, tuple(m for m in METHODS if m not in NEEDS_ENDPOINT))  # no LLM settings here
        with gr.Tab("Past runs"):
            _runs_tab(gr, controller)
        with gr.Tab("Benchmarks"):
            _bench_tab(gr, controller)
    return app


def _run_tab(gr: Any, c: Controller, d: RunRequest, methods: tuple[str, ...]) -> None:
    with gr.Row():
        prompt = gr.Textbox(d.prompt, label="prompt", elem_id="prompt", scale=3)
        task = gr.Radio(["improve", "attack"], value=d.task, label="task", elem_id="task")
        method = gr.Dropdown([task_default("method"), *methods], value=d.method, label="method", elem_id="method")
        proposal = gr.Radio([task_default("proposal"), *PROPOSALS], value=d.proposal,
                            label="candidates (random, epo, hybrid, tpe, mf)", elem_id="proposal")
    with gr.Row():
        budget = gr.Number(d.budget, label="budget (full generations)", elem_id="budget")
        seeds = gr.Textbox(d.seeds, label="search seeds", elem_id="seeds")
        report_seeds = gr.Textbox(d.report_seeds, label="held-out seeds", elem_id="report_seeds")
        seed = gr.Number(d.seed, label="root seed", precision=0, elem_id="seed")
        steps = gr.Number(d.steps, label="sampling steps", precision=0, elem_id="steps")
    select_judges = gr.Textbox(d.select_judges, label="selection judges (optional; every one must prefer the answer "
                               "to the user prompt on the validation seeds, e.g. clip:world:judge_b)",
                               elem_id="select_judges")
    build = gr.Button("Build search space", elem_id="build")
    space = gr.Textbox(label="search space (one line per slot: edit the substitutes)", lines=6, elem_id="space")
    space_info = gr.Markdown(elem_id="space_info")
    built = gr.State(None)
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
    message = gr.Markdown(elem_id="message")
    status = gr.Markdown(elem_id="status")
    best = gr.Markdown(elem_id="best")
    live = gr.Image(label="best so far (search seeds)", type="pil", interactive=False, height=160,
                    elem_id="live")
    result = gr.Markdown(elem_id="result")
    comparison = gr.Image(label="user (top) vs best (bottom) on search and held-out seeds", type="filepath",
                          interactive=False, elem_id="comparison")
    download = gr.File(label="run folder (zip)", interactive=False, elem_id="download")
    job = gr.State(None)
    timer = gr.Timer(POLL_SECONDS, active=False)

    def on_build(p: str, t: str):
        try:
            text, info, space_dict = c.build(p, t)
            return text, info, space_dict, ""
        except UserMessage as e:
            return "", "", None, error_text(e)

    def on_start(p, t, m, b, s, rs, sd, st, text, built_space, pr, sj):
        request = RunRequest(prompt=p, task=t, method=m, proposal=pr, budget=b if b is not None else 0, seeds=s,
                             report_seeds=rs, seed=int(sd or 0), steps=None if st is None or st == "" else int(st),
                             space_text=text if text and text.strip() else None, select_judges=sj or "")
        try:
            job_id = c.start(request, built_space)
        except UserMessage as e:
            return None, error_text(e), gr.Timer(active=False), "", "", None, "", None, None
        return job_id, "", gr.Timer(active=True), "**queued**", "", None, "", None, None

    def on_poll(job_id):
        if job_id is None:
            return gr.Timer(active=False), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            view: RunView = c.poll(job_id)
        except UserMessage as e:
            return gr.Timer(active=False), error_text(e), "", gr.skip(), "", None, None
        live_image = view.live_image if view.live_image is not None else gr.skip()
        return (gr.Timer(active=not view.done), view.status, view.best, live_image, view.result,
                str(view.comparison) if view.comparison else None, str(view.download) if view.download else None)

    build.click(on_build, [prompt, task], [space, space_info, built, message])
    start.click(on_start, [prompt, task, method, budget, seeds, report_seeds, seed, steps, space, built, proposal,
                           select_judges],
                [job, message, timer, status, best, live, result, comparison, download])
    def on_cancel(job_id):
        try:
            c.cancel(job_id)
            return ""
        except UserMessage as e:
            return error_text(e)

    cancel.click(on_cancel, [job], [message])
    timer.tick(on_poll, [job], [timer, status, best, live, result, comparison, download])


def _picker(gr: Any, label: str, prefix: str) -> tuple[Any, Any, Any]:
    """A folder dropdown, its refresh button and a line for errors."""
    with gr.Row():
        pick = gr.Dropdown(choices=[], label=label, elem_id=f"{prefix}_pick", scale=3)
        refresh = gr.Button("Refresh", elem_id=f"{prefix}_refresh")
    return pick, refresh, gr.Markdown(elem_id=f"{prefix}_message")


def _runs_tab(gr: Any, c: Controller) -> None:
    pick, refresh, message = _picker(gr, "run folder", "run")
    text = gr.Markdown(elem_id="run_result")
    image = gr.Image(type="filepath", interactive=False, label="user vs best", elem_id="run_comparison")
    download = gr.File(interactive=False, label="run folder (zip)", elem_id="run_download")

    def on_pick(rel):
        if not rel:
            return "", "", None, None
        try:
            view = c.run(rel)
        except UserMessage as e:
            return error_text(e), "", None, None
        return "", view["markdown"], str(view["image"]) if view["image"] else None, str(view["download"])

    refresh.click(lambda: gr.Dropdown(choices=c.runs()), None, pick)
    pick.change(on_pick, pick, [message, text, image, download])


def _bench_tab(gr: Any, c: Controller) -> None:
    pick, refresh, message = _picker(gr, "benchmark folder", "bench")
    tables = gr.Markdown(elem_id="bench_tables")
    curves = gr.Image(type="filepath", interactive=False, label="loss vs budget", elem_id="bench_curves")
    grids = gr.Gallery(label="user vs best per prompt and method", columns=2, object_fit="contain",
                       elem_id="bench_grids")

    def on_pick(rel):
        if not rel:
            return "", "", None, []
        try:
            view = c.bench(rel)
        except UserMessage as e:
            return error_text(e), "", None, []
        return ("", view["markdown"], str(view["curves"]) if view["curves"] else None,
                [(str(p), caption) for p, caption in view["images"]])

    refresh.click(lambda: gr.Dropdown(choices=c.benches()), None, pick)
    pick.change(on_pick, pick, [message, tables, curves, grids])


def launch(app: Any, root: Path, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True) -> Any:
    """Serve ``app``: files only from ``root`` (the run folder), no share link unless asked."""
    gr = offline_gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: the page works offline
    app.queue(default_concurrency_limit=4)
    return app.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(Path(root).resolve())],
                      prevent_thread_lock=not block, quiet=True, show_error=False, ssr_mode=False, theme=theme,
                      mcp_server=False, footer_links=[], inbrowser=False, css=CSS)
