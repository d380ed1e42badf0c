"""The self-contained HTML page of a benchmark report: tables, the loss-vs-budget and loss-vs-time figures and image
grids.

Everything is inlined (images as ``data:`` URIs, CSS in the page), so the file can be mailed or opened offline.
Image grids show, per prompt, the user prompt's images and each method's on the same report seeds, with the
method's prompt and negative prompt. Images are shrunk to thumbnails so a report of Stable Diffusion runs stays small.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

THUMB = 160  # px, longest side of a grid image
_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.grid td { text-align: left; vertical-align: top; }
table.grid td.label { max-width: 320px; font-size: 12px; }
table.grid img { display: block; image-rendering: pixelated; }
.neg { color: #a33; } .muted { color: #777; font-size: 12px; }
"""


def _data_uri(path: Path, thumb: int = THUMB) -> str | None:
    """The image as a ``data:`` URI (shrunk to ``thumb`` px when Pillow is available); ``None`` if missing."""
    if not path.is_file():
        return None
    blob = path.read_bytes()
    try:
        from PIL import Image

        with Image.open(io.BytesIO(blob)) as img:
            if max(img.size) > thumb:
                img.thumbnail((thumb, thumb), Image.LANCZOS)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                blob = buf.getvalue()
    except ImportError:
        pass
    return "data:image/png;base64," + base64.b64encode(blob).decode()


def _table(header: list[str], cells: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _grid(data: Any, prompt: str) -> tuple[str, int]:
    """One prompt's image grid and the number of images that could not be found."""
    seeds = data.config["report_seeds"]
    missing = 0
    head = "<tr><td></td>" + "".join(f"<td class='muted'>seed {s}</td>" for s in seeds) + "</tr>"
    first = data.records[(prompt, data.methods[0])]
    rows = [("user prompt", first["images"]["user"], prompt, "", first["user_report_losses"], None)]
    for m in data.methods:
        if m == "user":
            continue
        r = data.records[(prompt, m)]
        faith = r["faithfulness"]["best"]["all_correct"] if r.get("faithfulness") else None
        rows.append((m, r["images"]["best"], r["best"]["prompt"], r["best"]["negative_prompt"], r["report_losses"],
                     faith))
    if first.get("faithfulness"):
        rows[0] = (*rows[0][:5], first["faithfulness"]["user"]["all_correct"])
    body = [head]
    for name, images, pos, neg, losses, faith in rows:
        loss = sum(losses) / len(losses)
        label = [f"<b>{html.escape(name)}</b> <span class='muted'>loss {loss:.4f}"
                 + (f", faithful {faith:.0%}" if faith is not None else "") + "</span>"]
        if name != "user prompt":
            label.append("same prompt" if pos == prompt else f"prompt: {html.escape(pos)}")
        if neg:
            label.append(f"<span class='neg'>negative: {html.escape(neg)}</span>")
        cells = []
        for rel in images:
            uri = _data_uri(data.out / rel)
            if uri is None:
                missing += 1
                cells.append("<td class='muted'>missing</td>")
            else:
                cells.append(f"<td><img src='{uri}' width='{THUMB}' alt='{html.escape(name)}'></td>")
        body.append(f"<tr><td class='label'>{'<br>'.join(label)}</td>{''.join(cells)}</tr>")
    return f"<h3>{html.escape(prompt)}</h3><table class='grid'>{''.join(body)}</table>", missing


def _notices(data: Any) -> list[str]:
    """Skipped stages and failed jobs, under the main table."""
    from dpo_diff.bench.report import failed_jobs, stage_note

    out = [f"<p class='neg' id='skipped-stages'>{html.escape(stage_note(data))}</p>"] if stage_note(data) else []
    lines = failed_jobs(data)
    if lines:
        out += [f"<h3 id='failed-jobs'>Failed jobs ({len(lines)}; rerun the bench to retry them)</h3>", "<ul>",
                *(f"<li>{html.escape(line)}</li>" for line in lines), "</ul>"]
    return out


def render_html(data: Any, *, markdown_tables: tuple, curves_png: Path | None, grid_prompts: int = 12,
                budget_views: tuple | None = None, time_png: Path | None = None,
                cross_judge: tuple | None = None) -> str:
    """The page for a :class:`dpo_diff.bench.report.ReportData`; ``budget_views``: ``((header, cells), note)`` of
    the cost-and-seconds table, ``time_png``: the loss-vs-time figure."""
    (main_h, main_c), (win_h, win_c) = markdown_tables
    cfg = data.config
    model = "shapes world" if cfg.get("world") else cfg.get("model", "")
    judge = "shapes-world CLIP" if cfg.get("world") else cfg.get("judge", "")
    goal = "lower" if data.task == "improve" else "higher"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dpo-diff benchmark report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>dpo-diff benchmark: {html.escape(data.task)}</h1>",
        f"<p>Generator <code>{html.escape(str(model))}</code>, judge <code>{html.escape(str(judge))}</code>. "
        f"{len(data.prompts)} prompts compared"
        + (f" ({data.incomplete} more not finished by every method)" if data.incomplete else "")
        + f"; budget {cfg['budget']:g} full generations; search seeds {cfg['seeds']}; report seeds "
        f"{cfg['report_seeds']}; {cfg['steps']} steps, guidance {cfg['guidance']:g}. {goal.capitalize()} judge loss "
        "is better.</p>",
        *([f"<p class='neg'>Warning: {html.escape(data.skipped)}.</p>"] if getattr(data, "skipped", "") else []),
        "<h2>Judge loss on held-out report seeds</h2>",
        _table(main_h, main_c, "results"),
        "<p class='muted'>Mean ± std over prompts of the per-prompt mean loss; 95% t intervals; Δ is the paired "
        "difference to the user prompt; cost in full-generation equivalents.</p>",
        *_notices(data),
        "<h2>Win rates</h2>",
        _table(win_h, win_c, "wins"),
    ]
    if budget_views is not None:
        (views_h, views_c), note = budget_views
        parts += ["<h2>Budget: cost charged and seconds measured</h2>", _table(views_h, views_c, "budget-views"),
                  f"<p class='muted'>{html.escape(note)}</p>"]
    if cross_judge is not None:
        from dpo_diff.bench.cross_judge import cross_judge_note

        parts += ["<h2>Cross-judge evaluation</h2>", _table(*cross_judge, "cross-judge"),
                  f"<p class='muted'>{html.escape(cross_judge_note(data))}</p>"]
    from dpo_diff.bench.report import SELECTION_NOTE, selection_table

    selection = selection_table(data)
    if selection is not None:
        parts += ["<h2>Selection judges</h2>", _table(*selection, "selection-judges"),
                  f"<p class='muted'>{html.escape(SELECTION_NOTE)}</p>"]
    if curves_png is not None:
        parts += ["<h2>Best loss vs budget</h2>",
                  f"<img id='curves' src='{_data_uri(curves_png, thumb=10_000)}' alt='loss vs budget'>"]
    if time_png is not None:
        parts += ["<h2>Best loss vs wall-clock time</h2>",
                  f"<img id='time-curves' src='{_data_uri(time_png, thumb=10_000)}' alt='loss vs time'>"]
    shown = data.prompts[:grid_prompts]
    parts.append(f"<h2>Images ({len(shown)} of {len(data.prompts)} prompts)</h2>")
    missing = 0
    for prompt in shown:
        block, miss = _grid(data, prompt)
        parts.append(block)
        missing += miss
    if missing:
        parts.insert(-len(shown), f"<p class='neg'>{missing} images are missing from the folder.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
