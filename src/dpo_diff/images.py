"""Saving generated images: single PNGs and labelled side-by-side grids (user prompt vs optimized)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor


def to_pil(image: Tensor):
    """``Tensor[3, H, W]`` in [0, 1] -> PIL image."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


def save_png(image: Tensor, path: str | Path, min_side: int = 0):
    """Save one image; tiny images (e.g. 32 px) are enlarged with nearest-neighbour so they can be seen."""
    from PIL import Image

    img = to_pil(image)
    if min_side and min(img.size) < min_side:
        f = -(-min_side // min(img.size))
        img = img.resize((img.width * f, img.height * f), Image.NEAREST)
    img.save(path)
    return img


CAPTION_LINE = 12  # px per line of a cell caption (PIL's default bitmap font is about 11 px high)


def save_grid(rows: Sequence[Sequence[Tensor]], labels: Sequence[str], path: str | Path, cell: int = 128,
              captions: Sequence[Sequence[str]] | None = None) -> None:
    """Rows of images (e.g. [user images], [optimized images] on the same seeds) with a text label per row and,
    with ``captions``, a caption under each image (``captions[row][column]``, lines split by newlines)."""
    from PIL import Image, ImageDraw

    ncol = max(len(r) for r in rows)
    label_h = 14
    lines = max((c.count("\n") + 1 for row in captions or () for c in row), default=0)
    row_h = label_h + cell + lines * CAPTION_LINE
    grid = Image.new("RGB", (ncol * cell, len(rows) * row_h), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = r * row_h
        draw.text((2, y + 1), label[: cell * ncol // 6], fill="black")
        for c, image in enumerate(row):
            grid.paste(to_pil(image).resize((cell, cell), Image.NEAREST), (c * cell, y + label_h))
            if captions:
                draw.multiline_text((c * cell + 2, y + label_h + cell), captions[r][c], fill="black", spacing=1)
    grid.save(path)
