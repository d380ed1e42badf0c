"""Command-line options of judges shared by ``optimize``, ``bench`` and ``select`` (one definition of each flag)."""

from __future__ import annotations

OBJECTIVE_HELP = (
    "weighted judge terms instead of --judge, each normalised against the user prompt on the same seeds, e.g. "
    "'clip:openai/clip-vit-large-patch14=1,aesthetic:sac+logos+ava1-l14-linearMSE.pth=0.2'; a term 'JUDGE<=+M' is "
    "a constraint (its loss may rise at most M above the user prompt's). Judges: clip:ID, siglip:ID, "
    "aesthetic:FILE[clip=ID], vqa:ID[dtype=bf16] (see docs/judges.md)")
EVAL_HELP = ("comma-separated judges that score the final images but not the search (cross-judge evaluation), e.g. "
             "'clip:openai/clip-vit-large-patch14,siglip:google/siglip-base-patch16-224'; 'checker' is the shapes "
             "world's ground truth")


def add_judge_arguments(p, *, evaluators: bool = True, objective_help: str = OBJECTIVE_HELP) -> None:
    p.add_argument("--objective", default=None, metavar="SPEC", help=objective_help)
    if evaluators:
        p.add_argument("--eval-judges", default="", metavar="SPECS", help=EVAL_HELP)


SELECT_HELP = (
    "selection judges against judge gaming, comma-separated or the flag repeated, e.g. 'clip:world:judge_b' or "
    "'clip:openai/clip-vit-large-patch14,siglip:google/siglip-base-patch16-224': the re-ranking's images are also "
    "scored by these judges, and an answer replaces the user prompt only if EVERY one prefers it to the user prompt "
    "on the validation seeds (an agreement rule; the first judge orders the candidates; result.json names the judges "
    "that vetoed). Needs re-ranking (--rerank-top N, N >= 2; refused with --rerank-top 0). Cost: no extra budget, "
    "but the user prompt is generated once more per validation seed (not charged, as its other baseline images) and "
    "every re-ranked image is scored once per judge. Not the checker (ground truth)")


def eval_judge_specs(text: str | None) -> tuple[str, ...]:
    """``--eval-judges`` as a tuple of spec strings (checked when the config is built)."""
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())
