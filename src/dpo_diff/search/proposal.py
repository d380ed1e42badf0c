"""Where the discrete searches draw their candidates from: one proposal object every sampler takes.

The paper's searches draw candidates from the *uniform* distribution over the product space (random search, EPO's
population and mutation, TPE's categorical priors, mf's screens). For a typical improve prompt (6-9 antonym slots
with "" plus 3-5 options each) a uniform candidate is a negative prompt of 5-8 terms, and for attack a rewrite of
most words at once: in the registered records exactly the answers that help least and game the judge most (answers
with 1-2 negative terms gained +24 points of ground truth, answers with 6 or more +2.5).

``Proposal("sparse")`` draws *edits of the user prompt* instead: first the number of changed slots (one plus a
geometric count, mean :attr:`Proposal.mean_changes`), then which slots (uniformly, without repeats) and, for each,
one of its non-default options (uniformly). Its mutation adds, drops or swaps one change, so EPO stays near sparse
answers. ``Proposal("uniform")`` is the paper's behaviour, draw for draw the same as before this module existed
(registered results stay reproducible). As TextAttack keeps its transformation apart from its search method, the
proposal is kept apart from the searches: each takes one and only asks it for candidates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

from dpo_diff.search import DEFAULT_SPARSE_MEAN, PAPER_PROPOSAL, PROPOSALS
from dpo_diff.space import Candidate

MAX_DRAWS_PER_CANDIDATE = 50  # attempts per wanted candidate before a small space is taken as exhausted


@dataclass(frozen=True)
class Proposal:
    """How candidates are drawn: ``uniform`` (the paper's) or ``sparse`` (few changed slots first).

    Args:
        kind: ``"uniform"`` or ``"sparse"``.
        mean_changes: sparse only: the mean number of changed slots (1 + a geometric count; 1 = single edits only),
            truncated at the number of slots that can change.
    """

    kind: str = PAPER_PROPOSAL
    mean_changes: float = DEFAULT_SPARSE_MEAN

    def __post_init__(self) -> None:
        if self.kind not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.kind!r}; choose one of {list(PROPOSALS)}")
        if not (isinstance(self.mean_changes, (int, float)) and math.isfinite(self.mean_changes)
                and self.mean_changes >= 1):
            raise ValueError(f"mean_changes must be a finite number >= 1 (changed slots per candidate), "
                             f"got {self.mean_changes!r}")

    @property
    def sparse(self) -> bool:
        return self.kind == "sparse"

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------------ drawing
    def num_changes(self, rng: random.Random, limit: int) -> int:
        """How many slots a sparse candidate changes: 1 + Geometric(q), mean ``mean_changes``, at most ``limit``."""
        q = (self.mean_changes - 1) / self.mean_changes  # P(one more change): mean of 1 + G is 1 / (1 - q)
        k = 1
        while k < limit and rng.random() < q:
            k += 1
        return k

    def sample(self, sizes: Sequence[int], rng: random.Random) -> Candidate:
        """One candidate (the user prompt's indices are all 0)."""
        if not self.sparse:
            return tuple(rng.randrange(s) for s in sizes)
        mutable = [i for i, s in enumerate(sizes) if s > 1]
        genes = [0] * len(sizes)
        for i in rng.sample(mutable, self.num_changes(rng, len(mutable))) if mutable else ():
            genes[i] = rng.randrange(1, sizes[i])
        return tuple(genes)

    def distinct(self, sizes: Sequence[int], n: int, rng: random.Random,
                 exclude: Collection[Candidate] = frozenset()) -> list[Candidate]:
        """Up to ``n`` distinct candidates not in ``exclude`` (fewer when the space, or its sparse part, runs out)."""
        seen = set(exclude)
        # How many proposable candidates are still unseen (sparse never proposes the user prompt itself).
        left = math.prod(sizes) - len(seen)
        if self.sparse:
            left -= tuple([0] * len(sizes)) not in seen
        out: list[Candidate] = []
        for _ in range(MAX_DRAWS_PER_CANDIDATE * max(n, 1)):
            if len(out) >= n or left <= 0:
                break
            c = self.sample(sizes, rng)
            if c not in seen:
                seen.add(c)
                out.append(c)
                left -= 1
        return out

    def sparsify(self, candidate: Candidate, rng: random.Random) -> Candidate:
        """A model's suggestion projected onto the prior (sparse: keep a drawn number of its changes, chosen at
        random, the rest reset to the user's; uniform: unchanged). TPE uses it: the model picks slots and options,
        the prior how many."""
        changed = [i for i, c in enumerate(candidate) if c != 0]
        if not self.sparse or not changed:
            return candidate
        keep = set(rng.sample(changed, self.num_changes(rng, len(changed))))
        return tuple(c if i in keep else 0 for i, c in enumerate(candidate))

    def mutate(self, parent: Candidate, sizes: Sequence[int], p: float, rng: random.Random) -> Candidate:
        """A child that differs from ``parent``. Uniform: EPO's gene-wise resampling with probability ``p``.
        Sparse: one move: add a change, drop one (when two or more are made) or swap one's option."""
        if not self.sparse:
            return _uniform_mutate(parent, sizes, p, rng)
        changed = [i for i, c in enumerate(parent) if c != 0]
        free = [i for i, s in enumerate(sizes) if s > 1 and parent[i] == 0]
        swappable = [i for i in changed if sizes[i] > 2]
        moves = [m for m, ok in (("add", free), ("drop", len(changed) >= 2), ("swap", swappable)) if ok]
        if not moves:
            return parent
        genes = list(parent)
        move = rng.choice(moves)
        if move == "add":
            i = rng.choice(free)
            genes[i] = rng.randrange(1, sizes[i])
        elif move == "drop":
            genes[rng.choice(changed)] = 0
        else:
            i = rng.choice(swappable)
            genes[i] = rng.choice([o for o in range(1, sizes[i]) if o != parent[i]])
        return tuple(genes)


UNIFORM = Proposal("uniform")


def _uniform_mutate(parent: Candidate, sizes: Sequence[int], p: float, rng: random.Random) -> Candidate:
    """Resample each gene with probability ``p`` to a *different* option; at least one gene changes."""
    mutable = [i for i, s in enumerate(sizes) if s > 1]
    if not mutable:
        return parent
    genes = list(parent)
    changed = False
    for i in mutable:
        if rng.random() < p:
            genes[i] = rng.choice([o for o in range(sizes[i]) if o != parent[i]])
            changed = True
    if not changed:  # an unchanged child is its parent: a wasted (duplicate) proposal
        i = rng.choice(mutable)
        genes[i] = rng.choice([o for o in range(sizes[i]) if o != parent[i]])
    return tuple(genes)


def num_changed(candidate: Sequence[int]) -> int:
    """How many slots a candidate changes from the user prompt (its sparsity)."""
    return sum(1 for c in candidate if c != 0)
