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


def save_grid(rows: Sequence[Sequence[Tensor]], labels: Sequence[str], path: str | Path, cell: int = 128) -> None:
    """Rows of images (e.g. [user images], [optimized images] on the same seeds) with a text label per row."""
    from PIL import Image, ImageDraw

    ncol = max(len(r) for r in rows)
    label_h = 14
    grid = Image.new("RGB", (ncol * cell, len(rows) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = r * (cell + label_h)
        draw.text((2, y + 1), label[: cell * ncol // 6], fill="black")
        for c, image in enumerate(row):
            grid.paste(to_pil(image).resize((cell, cell), Image.NEAREST), (c * cell, y + label_h))
    grid.save(path)
