"""Search spaces: the compact discrete spaces DPO-Diff searches over (paper Sec. 3).

A :class:`SearchSpace` is an ordered tuple of :class:`Slot` s for the *positive* prompt (one per substitutable
word: the synonym space used by attacks), the *negative* prompt (the antonym space and NPLib used to improve
prompts), or both (the hybrid space). A candidate is one option index per slot; :meth:`SearchSpace.render` turns it
into the ``(prompt, negative_prompt)`` pair the diffusion model receives.

Conventions (shared with every searcher and with the gradient relaxation):

* Positive slot: ``options[0]`` is the original word, so candidate ``(0, ..., 0)`` is the user prompt.
* Negative slot: ``options[0]`` is ``""`` (no term), so candidate ``(0, ..., 0)`` adds no negative prompt.
* Negative terms are joined with ``", "``; empty choices are dropped (no dangling commas).

Spaces are plain JSON (:meth:`SearchSpace.to_dict`). :func:`load_spaces` also reads the reference implementation's
per-prompt layout (``{"synonym"|"sub": "w -> a, b" | {...}, "antonym"|"opp": ..., "keywords": [...]}``) so spaces
pre-generated for the reference code keep working.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

SlotTarget = Literal["positive", "negative"]
SLOT_TARGETS: tuple[str, ...] = ("positive", "negative")
SEARCH_TARGETS: tuple[str, ...] = ("auto", *SLOT_TARGETS, "both")  # which slots a run searches (auto: by task)
Candidate = tuple[int, ...]
"""One option index per slot, in slot order (immutable and hashable, so it can key caches)."""

# A "word" of a prompt: letters/digits with inner apostrophes or hyphens ("don't", "red-eyed"). Punctuation and
# spacing between words are kept verbatim when a candidate is rendered.
_WORD_RE = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
SPACE_FORMAT = "dpo-diff/space-v1"


class SpaceError(ValueError):
    """A search space is malformed or does not match its prompt."""


@dataclass(frozen=True)
class WordSpan:
    index: int
    start: int
    end: int
    text: str


def prompt_words(prompt: str) -> list[WordSpan]:
    """Split ``prompt`` into words with their character spans (the unit slots refer to by ``position``)."""
    return [WordSpan(i, m.start(), m.end(), m.group(0)) for i, m in enumerate(_WORD_RE.finditer(prompt))]


@dataclass(frozen=True)
class PromptPair:
    """What a text-to-image model is conditioned on."""

    prompt: str
    negative_prompt: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt}


@dataclass(frozen=True)
class Slot:
    """One decision of the search.

    Args:
        target: ``"positive"`` (substitutes a word of the prompt) or ``"negative"`` (adds a negative-prompt term).
        word: the original word this slot is about (``""`` for generic NPLib slots).
        options: the choices; ``options[0]`` is ``word`` for positive slots and ``""`` for negative slots.
        position: index of ``word`` among :func:`prompt_words` of the prompt (required for positive slots, kept
            for antonym slots so users can see which word they came from, ``None`` for NPLib slots).
        source: where the options came from (``"synonym"``, ``"antonym"``, ``"nplib"``, ...); informational.
    """

    target: SlotTarget
    word: str
    options: tuple[str, ...]
    position: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if self.target not in SLOT_TARGETS:
            raise SpaceError(f"slot target {self.target!r} is not one of {SLOT_TARGETS}")
        if not self.options:
            raise SpaceError(f"slot for word {self.word!r} has no options; it needs at least its default option")
        if len(set(self.options)) != len(self.options):
            dupes = sorted({o for o in self.options if self.options.count(o) > 1})
            raise SpaceError(f"slot for word {self.word!r} lists options more than once: {dupes}")
        if self.target == "positive":
            if self.position is None:
                raise SpaceError(f"positive slot for word {self.word!r} needs the word's position in the prompt")
            if self.options[0] != self.word:
                raise SpaceError(
                    f"positive slot for word {self.word!r}: options[0] must be the original word, got "
                    f"{self.options[0]!r}"
                )
            empty = [o for o in self.options if not o.strip()]
            if empty:
                raise SpaceError(f"positive slot for word {self.word!r} has empty options; a word cannot be blank")
        else:
            if self.options[0] != "":
                raise SpaceError(
                    f"negative slot for word {self.word!r}: options[0] must be '' (no term), got {self.options[0]!r}"
                )
            blank = [o for o in self.options[1:] if not o.strip()]
            if blank:
                raise SpaceError(f"negative slot for word {self.word!r} has blank options besides options[0]")

    @property
    def size(self) -> int:
        return len(self.options)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"target": self.target, "word": self.word, "options": list(self.options)}
        if self.position is not None:
            d["position"] = self.position
        if self.source:
            d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Slot:
        from dpo_diff.schemas import SlotSchema, validate

        return _slot(validate(SlotSchema, d, error=SpaceError, where="slot"))


@dataclass(frozen=True)
class SearchSpace:
    """A user prompt and the slots searched over it (see module docstring for conventions)."""

    prompt: str
    slots: tuple[Slot, ...] = ()
    negative_prompt: str = ""
    """A fixed negative prompt the user already had; searched negative terms are appended after it."""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", tuple(self.slots))
        if not self.prompt.strip():
            raise SpaceError("the prompt is empty; give the text you want to generate")
        words = prompt_words(self.prompt)
        seen: set[int] = set()
        for slot in self.slots:
            if slot.target != "positive":
                continue
            pos = slot.position
            assert pos is not None
            if not 0 <= pos < len(words):
                raise SpaceError(
                    f"slot word {slot.word!r} has position {pos}, but the prompt {self.prompt!r} has {len(words)} "
                    f"words (positions 0..{len(words) - 1})"
                )
            if words[pos].text.lower() != slot.word.lower():
                raise SpaceError(
                    f"slot word {slot.word!r} is not the prompt's word at position {pos} ({words[pos].text!r}); "
                    f"prompt words: {[w.text for w in words]}"
                )
            if pos in seen:
                raise SpaceError(f"two positive slots substitute the same word position {pos} ({slot.word!r})")
            seen.add(pos)

    # ---------------------------------------------------------------- structure
    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.size for s in self.slots)

    @property
    def num_candidates(self) -> int:
        n = 1
        for s in self.slots:
            n *= s.size
        return n

    @property
    def is_trivial(self) -> bool:
        """True when there is nothing to search (no slot has a second option)."""
        return all(s.size <= 1 for s in self.slots)

    def slots_of(self, target: SlotTarget) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.target == target]

    @property
    def default(self) -> Candidate:
        """The user's own prompt (original words, no added negative terms)."""
        return (0,) * len(self.slots)

    def validate_candidate(self, candidate: Sequence[int]) -> Candidate:
        cand = tuple(int(c) for c in candidate)
        if len(cand) != len(self.slots):
            raise SpaceError(f"candidate has {len(cand)} indices but the space has {len(self.slots)} slots")
        for i, (c, s) in enumerate(zip(cand, self.slots)):
            if not 0 <= c < s.size:
                raise SpaceError(f"candidate index {c} for slot {i} ({s.word!r}) is outside 0..{s.size - 1}")
        return cand

    def select(self, target: SlotTarget | Literal["both"]) -> SearchSpace:
        """The sub-space with only ``target`` slots (e.g. the antonym part of a hybrid space)."""
        if target == "both":
            return self
        return SearchSpace(self.prompt, tuple(s for s in self.slots if s.target == target), self.negative_prompt,
                           self.meta)

    # ---------------------------------------------------------------- rendering
    def render(self, candidate: Sequence[int]) -> PromptPair:
        """Turn a candidate into the prompt pair given to the model (exact text, used for all evaluations)."""
        cand = self.validate_candidate(candidate)
        words = prompt_words(self.prompt)
        replacements: dict[int, str] = {}
        negatives: list[str] = [self.negative_prompt.strip()] if self.negative_prompt.strip() else []
        for c, slot in zip(cand, self.slots):
            choice = slot.options[c]
            if slot.target == "positive":
                assert slot.position is not None
                if c:  # option 0 is the word itself: leave the user's text untouched
                    replacements[slot.position] = _match_case(words[slot.position].text, choice)
            elif choice:
                negatives.append(choice)
        prompt = self.prompt
        # Replace right to left so earlier spans stay valid; whole words only, never substrings.
        for pos in sorted(replacements, reverse=True):
            w = words[pos]
            prompt = prompt[: w.start] + replacements[pos] + prompt[w.end :]
        return PromptPair(prompt, ", ".join(negatives))

    def describe(self, candidate: Sequence[int]) -> list[str]:
        """Human-readable list of the changes a candidate makes (for logs and reports)."""
        out = []
        for c, slot in zip(self.validate_candidate(candidate), self.slots):
            if c == 0:
                continue
            if slot.target == "positive":
                out.append(f"{slot.word} -> {slot.options[c]}")
            else:
                out.append(f"-{slot.options[c]}")
        return out

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"prompt": self.prompt, "slots": [s.to_dict() for s in self.slots]}
        if self.negative_prompt:
            d["negative_prompt"] = self.negative_prompt
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        from dpo_diff.schemas import SpaceSchema, validate

        return _space(validate(SpaceSchema, d, error=SpaceError, where="search space"), "search space")


def _slot(s: Any) -> Slot:
    return Slot(s.target, s.word, tuple(s.options), s.position, s.source)


def _space(s: Any, where: str, loc: str = "") -> SearchSpace:
    """A validated :class:`~dpo_diff.schemas.SpaceSchema` as a space; errors name the file (``where``) and the
    place in it (``loc``)."""
    slots = []
    for i, slot in enumerate(s.slots):
        try:
            slots.append(_slot(slot))
        except SpaceError as e:
            raise SpaceError(f"{where}: {loc + '.' if loc else ''}slots[{i}]: {e}") from None
    try:
        return SearchSpace(s.prompt, tuple(slots), s.negative_prompt, dict(s.meta))
    except SpaceError as e:
        raise SpaceError(f"{where}: {loc + ': ' if loc else ''}{e}") from None


def _match_case(original: str, option: str) -> str:
    """Keep the user's capitalisation: 'Dog' -> 'Hound', 'DOG' -> 'HOUND'."""
    if original.isupper() and len(original) > 1:
        return option.upper()
    if original[:1].isupper():
        return option[:1].upper() + option[1:]
    return option


# ==================================================================== building from word -> options maps
def space_from_substitutes(
    prompt: str,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    antonyms: Mapping[str, Sequence[str]] | None = None,
    *,
    negative_prompt: str = "",
    keywords: Iterable[str] | None = None,
    source: str = "",
    meta: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """Build a space from ``{word: [substitutes]}`` maps, matching words of ``prompt`` case-insensitively.

    Synonyms become positive slots at *every* whole-word occurrence of the word; antonyms become one negative slot
    per word (in prompt order). An antonym key of several words ("coming out") that occurs in the prompt as a phrase
    becomes one negative slot too; a synonym key of several words cannot (a positive slot substitutes one word) and
    is skipped. Options equal to the word itself, blank or repeated options are dropped. ``keywords`` (the reference
    layout's optional list) are kept in ``meta["keywords"]``: the reference uses them for human evaluation only,
    so they never restrict the slots.

    Raises:
        SpaceError: a word of the maps does not occur in the prompt (the space was built for another prompt).
    """
    words = prompt_words(prompt)
    by_lower: dict[str, list[WordSpan]] = {}
    for w in words:
        by_lower.setdefault(w.text.lower(), []).append(w)
    meta = dict(meta or {})
    if keywords is not None:
        meta["keywords"] = [str(k) for k in keywords]

    def check(word: str) -> list[WordSpan]:
        spans = by_lower.get(word.lower())
        if not spans:
            raise SpaceError(
                f"word {word!r} of the search space does not occur in the prompt {prompt!r} (prompt words: "
                f"{[w.text for w in words]}); was the space built for a different prompt?"
            )
        return spans

    slots: list[Slot] = []
    pos_slots: dict[int, Slot] = {}
    for word, opts in (synonyms or {}).items():
        if len(word.split()) > 1:
            continue  # a phrase ("coming out" in the reference's spaces) cannot be one word slot
        for span in check(word):
            options = _clean_options(span.text, opts)
            if options:
                pos_slots[span.index] = Slot("positive", span.text, (span.text, *options), span.index,
                                             source or "synonym")
    slots.extend(pos_slots[i] for i in sorted(pos_slots))
    neg: list[tuple[int, Slot]] = []
    for word, opts in (antonyms or {}).items():
        if len(word.split()) > 1:
            start = find_phrase(words, word)
            if start is None:
                raise SpaceError(f"phrase {word!r} of the search space does not occur in the prompt {prompt!r}")
            text = " ".join(w.text for w in words[start:start + len(prompt_words(word))])
            span = WordSpan(start, words[start].start, words[start].end, text)
        else:
            span = check(word)[0]
        options = _clean_options(span.text, opts)
        if options:
            neg.append((span.index, Slot("negative", span.text, ("", *options), span.index, source or "antonym")))
    slots.extend(s for _, s in sorted(neg, key=lambda t: t[0]))
    return SearchSpace(prompt, tuple(slots), negative_prompt, meta)


def find_phrase(words: Sequence[WordSpan], phrase: str) -> int | None:
    """Index of the first prompt word where the words of ``phrase`` occur in a row (case-insensitively)."""
    want = [w.text.lower() for w in prompt_words(phrase)]
    have = [w.text.lower() for w in words]
    for i in range(len(have) - len(want) + 1):
        if want and have[i:i + len(want)] == want:
            return i
    return None


def _clean_options(word: str, options: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    seen = {word.lower()}
    for o in options:
        o = " ".join(str(o).split())
        if o and o.lower() not in seen:
            seen.add(o.lower())
            out.append(o)
    return tuple(out)


def word_bases(word: str) -> set[str]:
    """The word and the base forms its regular English inflection could come from (``flies`` -> ``fly``,
    ``running`` -> ``run``, ``baked`` -> ``bake``); used to match a reference entry's key to a prompt word."""
    w = word.lower()
    out = {w}
    for suffix, repl in (("ies", "y"), ("ied", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""),
                         ("ing", "e"), ("ying", "ie"), ("er", ""), ("est", "")):
        long_enough = len(w) > len(suffix) + (suffix != "ying")  # lying -> lie
        if w.endswith(suffix) and long_enough and not (suffix == "s" and w.endswith("ss")):
            stem = w[: -len(suffix)]
            out.add(stem + repl)
            if not repl and len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "aeiousl":
                out.add(stem[:-1])  # stopped -> stop, running -> run, bigger -> big
    return {b for b in out if len(b) >= 2}


def same_lemma(a: str, b: str) -> bool:
    """True when one word is a regular inflection of the other (or they are equal, ignoring case)."""
    return a.lower() in word_bases(b) or b.lower() in word_bases(a)


def resolve_reference_keys(prompt: str, mapping: Mapping[str, Sequence[str]], relation: str
                           ) -> tuple[dict[str, list[str]], list[str]]:
    """Match the keys of one reference entry's map to the prompt: ``(usable map, problems)``.

    A key matches a prompt word exactly (ignoring case), else by lemma (``fly`` for "flies"); an antonym key of
    several words matches a phrase of the prompt. Every other key is left out and described in ``problems``.
    """
    words = prompt_words(prompt)
    lower = {w.text.lower(): w.text for w in words}
    out: dict[str, list[str]] = {}
    problems: list[str] = []
    for key, opts in mapping.items():
        key_words = prompt_words(key)
        if len(key_words) > 1:
            if relation == "antonym" and find_phrase(words, key) is not None:
                out.setdefault(" ".join(w.text for w in key_words), []).extend(opts)
            elif relation == "antonym":
                problems.append(f"{relation} key {key!r} (not a phrase of the prompt)")
            else:
                problems.append(f"{relation} key {key!r} (several words; a synonym slot substitutes one word)")
            continue
        if not key_words:
            problems.append(f"{relation} key {key!r} (no word in it)")
            continue
        k = key_words[0].text.lower()
        matches = [lower[k]] if k in lower else [t for low, t in lower.items() if same_lemma(k, low)]
        if not matches:
            problems.append(f"{relation} key {key!r} (not a word of the prompt nor an inflection of one)")
        for m in matches:
            out.setdefault(m, []).extend(opts)
    return out, problems


def parse_reference_entry(prompt: str, entry: Mapping[str, Any], *, where: str = "reference layout"
                          ) -> tuple[SearchSpace, list[str]]:
    """Read the reference implementation's per-prompt JSON entry: ``(space, problems)``.

    Accepted keys: ``synonym`` or ``sub`` (positive space), ``antonym`` or ``opp`` (negative space), optional
    ``keywords`` (kept in ``meta``, never a filter). Each value is either the raw LLM answer (lines
    ``word -> a, b, c``) or a ``{word: [options]}`` map. Keys that match no word of the prompt are left out and
    described in ``problems`` (the rest of the entry is used); a malformed entry raises :class:`SpaceError` naming
    the place (``where``: the file).
    """
    from dpo_diff.schemas import ReferenceEntrySchema, format_loc, validate

    e = validate(ReferenceEntrySchema, dict(entry) if isinstance(entry, Mapping) else entry, error=SpaceError,
                 where=where, loc=(prompt,))
    problems: list[str] = []
    maps: dict[str, dict[str, list[str]]] = {}
    for relation, parts in (("synonym", (e.synonym, e.sub)), ("antonym", (e.antonym, e.opp))):
        merged: dict[str, list[str]] = {}
        for part in parts:
            for k, v in (part or {}).items():
                merged.setdefault(k, []).extend(v)
        maps[relation], missing = resolve_reference_keys(prompt, merged, relation)
        problems.extend(missing)
    meta: dict[str, Any] = {"format": "reference"}
    if problems:
        meta["skipped"] = problems
    try:
        space = space_from_substitutes(prompt, maps["synonym"], maps["antonym"], keywords=e.keywords, meta=meta)
    except SpaceError as err:
        raise SpaceError(f"{where}: {format_loc([prompt])}: {err}") from None
    if not space.slots:
        why = f"; skipped {', '.join(problems)}" if problems else ""
        space = replace(space, meta={**space.meta, "warning": f"the reference entry for {prompt!r} gives no usable "
                                                              f"substitutes{why}"})
    return space, problems


# ==================================================================== files
def load_spaces(path: str | os.PathLike[str]) -> dict[str, SearchSpace]:
    """Load every space in a JSON file, keyed by prompt.

    Accepts our format (``{"format": "dpo-diff/space-v1", "spaces": [...]}``, a single space object, or a list of
    them) and the reference layout (``{prompt: {"synonym": ..., "antonym": ...}}``). The file is validated against
    a schema: a malformed file raises :class:`SpaceError` naming the place (``spaces[0].slots[2].options[1]: expected
    a string, got 5``). In the reference layout, keys that match no word of their prompt are skipped with a
    warning (:class:`~dpo_diff.files.FileWarning`) naming the prompt; the rest of the file is used.
    """
    from dpo_diff.schemas import SpaceFileSchema, SpaceSchema, validate

    p = Path(path)
    where = f"search-space file {str(p)!r}"
    if p.is_dir():
        raise SpaceError(f"{where} is a directory, not a space file; give the JSON file that 'dpo-diff space build' "
                         f"wrote")
    if not p.is_file():
        raise FileNotFoundError(f"search-space file {str(p)!r} does not exist; build one with 'dpo-diff space build'")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpaceError(f"{where} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise SpaceError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    spaces: list[SearchSpace]
    if isinstance(data, dict) and "spaces" in data:
        envelope = validate(SpaceFileSchema, data, error=SpaceError, where=where)
        spaces = [_space(s, where, f"spaces[{i}]") for i, s in enumerate(envelope.spaces)]
    elif isinstance(data, dict) and "slots" in data:
        spaces = [_space(validate(SpaceSchema, data, error=SpaceError, where=where), where, "")]
    elif isinstance(data, list):
        items = validate(list[SpaceSchema], data, error=SpaceError, where=where)
        spaces = [_space(s, where, f"[{i}]") for i, s in enumerate(items)]
    elif isinstance(data, dict):
        spaces = []
        for prompt, entry in data.items():
            space, problems = parse_reference_entry(prompt, entry, where=where)
            if problems:
                from dpo_diff.files import FileWarning

                warnings.warn(f"{where}, entry for {prompt!r}: skipped {', '.join(problems)}", FileWarning,
                              stacklevel=2)
            spaces.append(space)
    else:
        from dpo_diff.schemas import show_value

        raise SpaceError(f"{where}: expected an object or a list of search spaces, got {show_value(data)}")
    return {s.prompt: s for s in spaces}


def load_space(path: str | os.PathLike[str], prompt: str | None = None) -> SearchSpace:
    """Load the space for ``prompt`` from a file (the only space, when ``prompt`` is None and there is one)."""
    spaces = load_spaces(path)
    if prompt is None:
        if len(spaces) != 1:
            raise SpaceError(f"{str(path)!r} holds {len(spaces)} spaces; say which prompt to use")
        return next(iter(spaces.values()))
    if prompt in spaces:
        return spaces[prompt]
    folded = {k.strip().lower(): v for k, v in spaces.items()}
    if prompt.strip().lower() in folded:
        return folded[prompt.strip().lower()]
    sample = list(spaces)[:5]
    raise SpaceError(f"{str(path)!r} has no space for prompt {prompt!r}; it has {len(spaces)} prompts, e.g. {sample}")


def save_spaces(spaces: Iterable[SearchSpace], path: str | os.PathLike[str]) -> None:
    """Write spaces atomically (write to a temporary file, then rename) so a crash never leaves half a file."""
    payload = {"format": SPACE_FORMAT, "spaces": [s.to_dict() for s in spaces]}
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def _create_beside(p: Path) -> tuple[int, Path]:
    """A new, empty temporary file next to ``p``. Created with mode 0666 so the umask applies as to any other
    file the tool writes (``mkstemp`` makes 0600 files: teammates and web servers could not read results)."""
    while True:
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue  # a concurrent writer drew the same name: draw again


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a crash never leaves half
    a file, and a reader sees the old or the new text."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(p)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
