"""A local web app: optimize prompts in the browser, watch the search, browse past runs and benchmarks.

  dpo-diff ui                                    # the bundled shapes world, offline, on http://127.0.0.1:7860
  dpo-diff ui --model CompVis/stable-diffusion-v1-4 --judge openai/clip-vit-base-patch32 --device cuda

Binds to 127.0.0.1 unless --host says otherwise and makes no public link unless --share. The page reads and writes
only inside --runs (default runs/ui). Needs the ui extra (pip install 'dpo-diff[ui]').
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", default=None, help="Stable Diffusion hub id or local folder (default: the bundled "
                                                 "shapes world, with its ground-truth checker)")
    p.add_argument("--judge", default=None, help="CLIP hub id or local folder (default: the world's judge, or "
                                                 "openai/clip-vit-base-patch32 with --model)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--runs", default="runs/ui", help="run folder: new runs go here; past runs and benchmarks "
                                                     "below it can be browsed (default runs/ui)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from dpo_diff.cli import UserError
    from dpo_diff.extras import require
    from dpo_diff.loading import resolve_device

    if args.judge and not args.model:
        raise UserError("--judge needs --model (the shapes world brings its own judge)")
    require("gradio", "the web app")  # Gradio is imported only when the page is built: check before any work
    root = Path(args.runs).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / ".gradio"))  # Gradio's file cache stays in the run folder
    from dpo_diff.ui.app import build_app, launch
    from dpo_diff.ui.controller import Controller
    from dpo_diff.ui.jobs import Models

    models = Models(args.model, args.judge, resolve_device(args.device))
    controller = Controller(root, models)
    app = build_app(controller)
    print(f"dpo-diff ui: {models.name} on {models.device}; runs in {root}", flush=True)
    try:
        _, url, share_url = launch(app, root, host=args.host, port=args.port, share=args.share, block=False)
        print(f"dpo-diff ui: open {url}" + (f" (public link: {share_url})" if share_url else ""), flush=True)
        app.block_thread()  # until Ctrl-C
    finally:
        controller.jobs.shutdown()
    return 0
