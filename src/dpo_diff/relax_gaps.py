"""How far the relaxation is from the discrete prompts: one-hot corners encoded relaxed and as rendered text.

Diagnostics over :mod:`dpo_diff.relax` (77-token templates) and :mod:`dpo_diff.relax_chunks` (long prompts) both,
so it sits above them: the relaxation modules never import it (``dpo-diff space show --model`` does).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dpo_diff.relax import negative_template, positive_template
from dpo_diff.relax_chunks import encode_side, side_templates, template_chunks, view_template
from dpo_diff.space import Candidate, SearchSpace


@dataclass(frozen=True)
class CornerGap:
    """How far one side's relaxation is from the discrete prompt at its one-hot corners."""

    side: str  # "positive" or "negative"
    corners: int  # corners checked
    total: int  # corners of this side (its slots' options multiplied; other slots at option 0)
    token_mismatches: int  # checked corners whose relaxed tokens differ from the tokenized rendered text
    max_abs: float  # max |relaxed - discrete| of the text encoder's 77 hidden states over the checked corners
    scale: float  # max |discrete| over the same corners (to read max_abs against)
    encoder: str = "text encoder"  # which of the backbone's text encoders


def _side_corners(space: SearchSpace, side: str, limit: int, seed: int) -> tuple[list[Candidate], int]:
    slots = space.slots_of(side)
    total = 1
    for i in slots:
        total *= space.slots[i].size
    base = list(space.default)

    def corner(choice: Sequence[int]) -> Candidate:
        c = list(base)
        for i, o in zip(slots, choice):
            c[i] = o
        return tuple(c)

    if total <= limit:
        return [corner(ch) for ch in itertools.product(*(range(space.slots[i].size) for i in slots))], total
    rng = random.Random(seed)
    out = {space.default}
    for _ in range(50 * limit):
        if len(out) >= limit:
            break
        out.add(corner([rng.randrange(space.slots[i].size) for i in slots]))
    return sorted(out), total


@torch.no_grad()
def corner_gaps(space: SearchSpace, backend, *, max_corners: int = 64, seed: int = 0) -> list[CornerGap]:
    """Encode one-hot corners of each side (all of them, or ``max_corners`` drawn with ``seed``) both relaxed and as
    rendered text, through every text encoder of ``backend`` (its ``text_views()``), and report the largest
    difference; 0 wherever the tokenizer splits the rendered text at the template's pieces."""
    out = []
    for view in backend.text_views():
        for side, build in (("positive", positive_template), ("negative", negative_template)):
            if space.slots_of(side):
                out.append(_view_gap(space, view, side, build, max(1, max_corners), seed))
    return out


def _view_gap(space: SearchSpace, view, side: str, build, max_corners: int, seed: int) -> CornerGap:
    # A view that chunks long prompts (SD/SDXL CLIPs) gets chunked templates and texts, one that truncates them (SD 3
    # and FLUX CLIPs) the truncated layout (dpo_diff.relax_chunks).
    template = side_templates(space, view)[side] if getattr(view, "chunks", False) else view_template(
        build, space, view)
    n = template_chunks(template)
    corners, total = _side_corners(space, side, max_corners, seed)
    gap = scale = 0.0
    mismatches = 0
    for c in corners:
        pair = space.render(c)
        text = pair.prompt if side == "positive" else pair.negative_prompt
        ids = view.tokenize([text], n) if n > 1 else view.tokenize([text])
        mismatches += template.corner_ids(c) != ids[0].tolist()
        ref = view.encode_ids(ids)
        weights = torch.zeros(len(space.slots), max(space.sizes))
        weights[torch.arange(len(c)), torch.tensor(c)] = 1.0
        relaxed = encode_side(view, template, weights)
        gap = max(gap, float((relaxed.float() - ref.float()).abs().max()))
        scale = max(scale, float(ref.float().abs().max()))
    return CornerGap(side, len(corners), total, mismatches, gap, scale, getattr(view, "name", "text encoder"))
