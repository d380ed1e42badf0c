"""NPLib: the negative prompt library, a fixed list of generic negative-prompt terms.

The paper's NPLib space adds extra negative slots that each choose one generic term ("blurry", "deformed",
"low quality", ...) or nothing. Our list (``dpo_diff/data/nplib.txt``, ~190 terms in themed sections) is our own
curation. Terms are dealt round-robin into the slots, so every slot mixes all sections and a candidate can combine,
say, a quality term with an anatomy term, which contiguous chunks of the themed file would forbid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from dpo_diff.space import Slot

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "nplib.txt"
DEFAULT_SLOTS = 4  # the paper's NPLib space: 4 slots


def load_nplib(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The NPLib terms (comments and blank lines removed, duplicates dropped, file order kept)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise FileNotFoundError(f"NPLib file {str(p)!r} does not exist; give a text file with one term per line")
    terms: list[str] = []
    seen: set[str] = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        term = " ".join(line.split("#", 1)[0].split())
        if term and term.lower() not in seen:
            seen.add(term.lower())
            terms.append(term)
    return terms


def nplib_slots(terms: Sequence[str] | None = None, *, num_slots: int = DEFAULT_SLOTS,
                forbidden: Iterable[str] = ()) -> list[Slot]:
    """``num_slots`` negative slots, each ``("", term_i, term_{i+k}, ...)``, dealing ``terms`` round-robin."""
    if num_slots < 1:
        raise ValueError(f"NPLib needs at least 1 slot, got num_slots={num_slots}")
    banned = {t.strip().lower() for t in forbidden}
    pool = [t for t in (load_nplib() if terms is None else terms) if t.strip() and t.strip().lower() not in banned]
    if not pool:
        return []
    num_slots = min(num_slots, len(pool))
    return [Slot("negative", "", ("", *pool[i::num_slots]), None, "nplib") for i in range(num_slots)]
