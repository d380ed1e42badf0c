"""Build DPO-Diff search spaces from a lexicon: the synonym, antonym, NPLib and hybrid spaces (paper Sec. 3).

* ``synonym``: one positive slot per substitutable word, ``[word, synonyms...]`` (attack; with a meaning constraint
  each single substitution is pre-filtered).
* ``antonym``: one negative slot per word with antonyms, ``["", antonyms...]`` (improvement).
* ``nplib``: 4 negative slots over the generic negative-prompt library (improvement).
* ``hybrid``: synonym positive slots and antonym negative slots searched jointly.

:func:`build_spaces` builds many prompts into one JSON file, writing it atomically after every prompt; rerunning
the same build skips prompts already in the file with the same settings, so an interrupted 500-prompt build
resumes where it stopped (and, with an LLM lexicon, its response cache makes even redone prompts free).

Example::

    from dpo_diff.space_builder import build_space
    space = build_space("a red car on a wet street", kind="antonym")   # offline WordNet lexicon
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dpo_diff.constraint import MeaningConstraint
from dpo_diff.extras import as_missing_extra
from dpo_diff.files import read_utf8
from dpo_diff.lexicons.base import Lexicon
from dpo_diff.lexicons.nplib import DEFAULT_SLOTS, nplib_slots
from dpo_diff.space import SearchSpace, SpaceError, load_spaces, prompt_words, save_spaces, space_from_substitutes

SpaceKind = Literal["synonym", "antonym", "nplib", "hybrid"]
KINDS: tuple[str, ...] = ("synonym", "antonym", "nplib", "hybrid")
_RELATIONS_OF = {"synonym": ("synonym",), "antonym": ("antonym",), "nplib": (), "hybrid": ("synonym", "antonym")}


class BuildError(ValueError):
    """A multi-prompt build stopped; finished spaces are saved and a rerun resumes."""


# ==================================================================== overrides
@dataclass(frozen=True)
class Overrides:
    """User corrections applied on top of the lexicon (file format in :func:`load_overrides`).

    ``add``: extra substitutes per word, placed first; ``forbid``: substitutes never used, per word or for every
    word (key ``"*"``); ``skip``: words that never get a slot; ``nplib_add``/``nplib_forbid``: NPLib terms.
    Extra substitutes also pass through the meaning constraint: search would reject them anyway.
    """

    add: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    forbid: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()
    nplib_add: tuple[str, ...] = ()
    nplib_forbid: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, origin: str = "overrides") -> Overrides:
        allowed = {"skip", "synonym", "antonym", "nplib"}
        if not isinstance(d, Mapping):
            raise SpaceError(f"{origin}: expected a mapping with keys {sorted(allowed)}, got {type(d).__name__}")
        unknown = set(d) - allowed
        if unknown:
            raise SpaceError(f"{origin}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")

        def words(value: Any, where: str) -> list[str]:
            if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(x, str)
                                                                                    for x in value):
                raise SpaceError(f"{origin}: {where} must be a list of strings, got {value!r}")
            return [" ".join(x.split()) for x in value if x.strip()]

        add: dict[str, dict[str, tuple[str, ...]]] = {}
        forbid: dict[str, dict[str, frozenset[str]]] = {}
        for rel in ("synonym", "antonym"):
            section = d.get(rel) or {}
            if not isinstance(section, Mapping) or set(section) - {"add", "forbid"}:
                raise SpaceError(f"{origin}: '{rel}' must be a mapping with keys 'add' and/or 'forbid' "
                                 f"(each {{word: [substitutes]}}), got {section!r}")
            for key, target in (("add", add), ("forbid", forbid)):
                table = section.get(key) or {}
                if not isinstance(table, Mapping):
                    raise SpaceError(f"{origin}: '{rel}.{key}' must map words to lists, got {table!r}")
                conv = {str(w).lower(): words(v, f"'{rel}.{key}.{w}'") for w, v in table.items()}
                target[rel] = ({w: tuple(v) for w, v in conv.items()} if key == "add"  # type: ignore[misc]
                               else {w: frozenset(x.lower() for x in v) for w, v in conv.items()})
        nplib = d.get("nplib") or {}
        if not isinstance(nplib, Mapping) or set(nplib) - {"add", "forbid"}:
            raise SpaceError(f"{origin}: 'nplib' must be a mapping with keys 'add' and/or 'forbid', got {nplib!r}")
        return cls(add=add, forbid=forbid, skip=frozenset(w.lower() for w in words(d.get("skip") or [], "'skip'")),
                   nplib_add=tuple(words(nplib.get("add") or [], "'nplib.add'")),
                   nplib_forbid=frozenset(x.lower() for x in words(nplib.get("forbid") or [], "'nplib.forbid'")))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for rel in ("synonym", "antonym"):
            sec = {}
            if self.add.get(rel):
                sec["add"] = {w: list(v) for w, v in sorted(self.add[rel].items())}
            if self.forbid.get(rel):
                sec["forbid"] = {w: sorted(v) for w, v in sorted(self.forbid[rel].items())}
            if sec:
                d[rel] = sec
        if self.skip:
            d["skip"] = sorted(self.skip)
        if self.nplib_add or self.nplib_forbid:
            d["nplib"] = {"add": list(self.nplib_add), "forbid": sorted(self.nplib_forbid)}
        return d

    def apply(self, relation: str, subs: Mapping[str, Sequence[str]], prompt: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        extra = self.add.get(relation, {})
        forbid = self.forbid.get(relation, {})
        present = {w.text.lower(): w.text for w in prompt_words(prompt)}
        keys = list(subs) + [present[w] for w in extra if w in present and present[w] not in subs]
        for word in keys:
            low = word.lower()
            if low in self.skip:
                continue
            banned = forbid.get(low, frozenset()) | forbid.get("*", frozenset())
            opts = [o for o in (*extra.get(low, ()), *subs.get(word, ())) if o.lower() not in banned]
            if opts:
                out[word] = opts
        return out


def load_overrides(path: str | os.PathLike[str]) -> Overrides:
    """Read overrides from JSON or YAML::

        skip: [photo]                       # words that never get a slot
        synonym:
          add: {dog: [pooch]}               # extra substitutes, placed first
          forbid: {dog: [cur], "*": [bitch]}
        antonym:
          add: {red: [teal]}
        nplib:
          add: [overexposed]
          forbid: [text]
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"overrides file {str(p)!r} does not exist")
    text = read_utf8(p, "overrides file")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: report both the file and the parser message
        raise SpaceError(f"overrides file {str(p)!r} cannot be parsed: {e}") from e
    return Overrides.from_dict(data or {}, origin=f"overrides file {str(p)!r}")


# ==================================================================== one prompt
def build_space(
    prompt: str,
    kind: SpaceKind = "antonym",
    lexicon: Lexicon | None = None,
    *,
    constraint: MeaningConstraint | None = None,
    overrides: Overrides | None = None,
    negative_prompt: str = "",
    nplib: bool | None = None,
    nplib_num_slots: int = DEFAULT_SLOTS,
    nplib_terms: Sequence[str] | None = None,
) -> SearchSpace:
    """Build the ``kind`` search space of one prompt.

    Args:
        prompt: the user prompt.
        kind: ``synonym`` | ``antonym`` | ``nplib`` | ``hybrid`` (see the module docstring).
        lexicon: substitute source (default: the offline :class:`~dpo_diff.lexicons.wordnet.WordNetLexicon`).
        constraint: meaning constraint; pre-filters the synonym slots' single substitutions.
        overrides: user additions/removals (:class:`Overrides`).
        negative_prompt: a fixed negative prompt the searched terms are appended to.
        nplib: add the NPLib slots (default: only for ``kind="nplib"``; ``True`` adds them to antonym spaces too).
        nplib_num_slots: NPLib slots (paper: 4).
        nplib_terms: NPLib terms (default: the shipped list).

    Returns:
        The space; when no word is substitutable it has no slots and ``meta["warning"]`` says why (optimizers must
        refuse such a space: there is nothing to search).
    """
    if kind not in KINDS:
        raise SpaceError(f"unknown space kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not prompt.strip():
        raise SpaceError("the prompt is empty; give the text you want to generate")
    ov = overrides or Overrides()
    relations = _RELATIONS_OF[kind]
    if relations and lexicon is None:
        from dpo_diff.lexicons.wordnet import WordNetLexicon

        lexicon = WordNetLexicon()
    subs = {rel: ov.apply(rel, lexicon.substitutes(prompt, rel), prompt) for rel in relations}  # type: ignore[union-attr,arg-type]
    space = space_from_substitutes(prompt, subs.get("synonym"), subs.get("antonym"), negative_prompt=negative_prompt)
    dropped: dict[str, list[str]] = {}
    if constraint is not None and space.slots_of("positive"):
        space, dropped = constraint.filter_space(space)
    slots = list(space.slots)
    if nplib if nplib is not None else kind == "nplib":
        terms = list(nplib_terms) if nplib_terms is not None else None
        if ov.nplib_add:
            from dpo_diff.lexicons.nplib import load_nplib

            terms = [*ov.nplib_add, *(terms if terms is not None else load_nplib())]
        slots += nplib_slots(terms, num_slots=nplib_num_slots, forbidden=ov.nplib_forbid)
    meta: dict[str, Any] = {"kind": kind}
    if lexicon is not None and relations:
        meta["lexicon"] = lexicon.describe()
    if constraint is not None:
        meta["constraint"] = constraint.describe()
        if dropped:
            meta["dropped_by_constraint"] = dropped
    result = SearchSpace(prompt, tuple(slots), negative_prompt, meta)
    if result.is_trivial:
        words = [w.text for w in prompt_words(prompt)]
        why = "stop words, words unknown to the lexicon" + (" and substitutes rejected by the meaning constraint"
                                                           if dropped else "")
        meta["warning"] = (f"no substitutable words in {prompt!r} for the {kind} space (prompt words: {words}; "
                           f"{why} get no slot); the space is empty and cannot be optimized")
        result = SearchSpace(prompt, (), negative_prompt, meta)
    return result


# ==================================================================== many prompts
def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Prompts from a text file (one per line, ``#`` comments), a JSON list, or a JSON object keyed by prompt
    (the reference's prompt files, ``{prompt: loss}``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    text = read_utf8(p, "prompt file")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpaceError(f"prompt file {str(p)!r} is not valid JSON: {e}") from e
        if isinstance(data, Mapping):
            prompts = [str(k) for k in data]
        elif isinstance(data, list) and all(isinstance(x, str) for x in data):
            prompts = list(data)
        else:
            raise SpaceError(f"prompt file {str(p)!r} must hold a list of strings or an object keyed by prompt")
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    prompts = [q for q in dict.fromkeys(prompts) if q.strip()]
    if not prompts:
        raise SpaceError(f"prompt file {str(p)!r} holds no prompts")
    return prompts


@dataclass
class BuildReport:
    """Outcome of :func:`build_spaces`: every space by prompt, and which prompts were built, reused or failed."""

    spaces: dict[str, SearchSpace]
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


def build_key(kind: str, lexicon: Lexicon | None, constraint: MeaningConstraint | None,
              overrides: Overrides | None, **extra: Any) -> str:
    """Fingerprint of the settings: a finished prompt is reused only if it was built with the same ones."""
    settings = {"kind": kind, "lexicon": lexicon.describe() if lexicon and _RELATIONS_OF[kind] else None,
                "constraint": constraint.describe() if constraint else None,
                "overrides": overrides.to_dict() if overrides else None, **extra}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_spaces(
    prompts: Iterable[str],
    kind: SpaceKind = "antonym",
    lexicon: Lexicon | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    on_error: Literal["raise", "skip"] = "raise",
    progress: Callable[[int, int, str, str], None] | None = None,
    save_every_s: float = 1.0,
    constraint: MeaningConstraint | None = None,
    overrides: Overrides | None = None,
    **space_kwargs: Any,
) -> BuildReport:
    """Build spaces for many prompts into one file (``out``), atomically rewritten after every prompt.

    Args:
        prompts: user prompts (duplicates ignored).
        kind, lexicon, constraint, overrides, **space_kwargs: as :func:`build_space`.
        out: JSON file holding all spaces (``None``: keep them in memory only).
        resume: reuse spaces already in ``out`` that were built with the same settings; ``False`` rebuilds all
            (other prompts in the file are kept either way).
        on_error: ``raise`` stops at the first failing prompt (after saving); ``skip`` records it and goes on.
        progress: called as ``progress(i, n, prompt, status)`` with status ``built``/``reused``/``failed``.
        save_every_s: rewrite ``out`` at most this often (and always at the end, on errors and on Ctrl-C); a hard
            kill loses at most this many seconds of work. ``0`` saves after every prompt.

    Raises:
        BuildError: a prompt failed with ``on_error="raise"``; the message says how many spaces are saved.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if kind not in KINDS:
        raise SpaceError(f"unknown space kind {kind!r}; choose one of {', '.join(KINDS)}")
    todo = [q for q in dict.fromkeys(prompts) if q.strip()]
    if _RELATIONS_OF[kind] and lexicon is None:
        from dpo_diff.lexicons.wordnet import WordNetLexicon

        lexicon = WordNetLexicon()
    key = build_key(kind, lexicon, constraint, overrides,
                    **{k: v for k, v in space_kwargs.items() if k != "nplib_terms"},
                    nplib_terms=list(space_kwargs.get("nplib_terms") or []) or None)
    spaces: dict[str, SearchSpace] = {}
    if out is not None and Path(out).is_file():
        spaces = load_spaces(out)  # keeps prompts of earlier builds that are not in this list
    report = BuildReport(spaces)
    pending = False
    last_save = time.monotonic()

    def save() -> None:
        nonlocal pending, last_save
        if out is not None and pending:
            save_spaces(spaces.values(), out)
        pending, last_save = False, time.monotonic()

    try:
        for i, prompt in enumerate(todo):
            old = spaces.get(prompt)
            if resume and old is not None and old.meta.get("build_key") == key:
                report.reused.append(prompt)
                if "warning" in old.meta:
                    report.warnings[prompt] = old.meta["warning"]
                if progress:
                    progress(i, len(todo), prompt, "reused")
                continue
            try:
                space = build_space(prompt, kind, lexicon, constraint=constraint, overrides=overrides,
                                    **space_kwargs)
            except Exception as e:
                missing = as_missing_extra(e, f"the {kind} space") if isinstance(e, ImportError) else None
                if missing is not None:  # every prompt would fail alike, and no rerun helps: say what to install
                    save()
                    raise missing from e
                report.failed[prompt] = f"{type(e).__name__}: {e}"
                if progress:
                    progress(i, len(todo), prompt, "failed")
                if on_error == "raise":
                    save()
                    saved = (f"; {len(spaces)} finished spaces are saved in {str(out)!r}: rerun the same build to "
                             "resume") if out is not None else ""
                    raise BuildError(f"building the {kind} space failed on prompt {i + 1} of {len(todo)} "
                                     f"({prompt!r}): {e}{saved}") from e
                continue
            spaces[prompt] = SearchSpace(space.prompt, space.slots, space.negative_prompt,
                                         {**space.meta, "build_key": key})
            report.built.append(prompt)
            if "warning" in space.meta:
                report.warnings[prompt] = space.meta["warning"]
            pending = True
            # Rewriting the whole file after every prompt is quadratic in the number of prompts; time-based
            # batching keeps a fast offline build fast while bounding what a crash can lose.
            if time.monotonic() - last_save >= save_every_s:
                save()
            if progress:
                progress(i, len(todo), prompt, "built")
    finally:
        save()  # also on Ctrl-C and unexpected errors: finished prompts are never lost
    return report


# ==================================================================== the one way every command builds spaces
DEFAULT_SIMILARITY_THRESHOLD = 0.9  # the paper's attack setting


def task_space_kind(task: str) -> str:
    """The space a task searches when none is named (:data:`dpo_diff.search.TASK_DEFAULTS`): hybrid (synonym swaps of
    the prompt's words with antonym negative-prompt terms) for improve, synonym (rewrites of the prompt's words) for
    attack."""
    from dpo_diff.search import task_defaults

    return task_defaults(task).space


WORLD_KINDS = {"antonym": "antonym", "synonym": "synonym", "hybrid": "both"}
"""The shapes world's name (:func:`dpo_diff.world.spaces.world_space`) of each space kind it can build (it has no
NPLib terms)."""


def world_kind(kind: str) -> str:
    """The shapes world's name of space ``kind`` (``SpaceError`` for a kind the world cannot build)."""
    if kind not in WORLD_KINDS:
        raise SpaceError(f"the shapes world builds {', '.join(WORLD_KINDS)} spaces from its own substitutes, not "
                         f"{kind!r}")
    return WORLD_KINDS[kind]


def meaning_constraint_for(kind: str, threshold: float | None,
                           model: str | None = None) -> MeaningConstraint | None:
    """The meaning pre-filter of a built space: spaces that rewrite the prompt's words (synonym, hybrid) drop each
    substitution whose prompt falls below ``threshold``; other kinds, and a threshold of ``None`` or 0, get none."""
    if kind not in ("synonym", "hybrid") or not threshold:
        return None
    return MeaningConstraint(model, threshold)


def build_task_spaces(prompts: Sequence[str], task: str, *, kind: str | None = None, world: bool = False,
                      similarity_threshold: float | None = DEFAULT_SIMILARITY_THRESHOLD,
                      similarity_model: str | None = None, out: str | os.PathLike[str] | None = None,
                      on_error: Literal["raise", "skip"] = "skip") -> BuildReport:
    """The spaces ``optimize`` (without ``--space``) and ``bench`` search, built as ``space build`` builds them:
    ``kind`` (default :func:`task_space_kind`) from the offline WordNet lexicon, pre-filtered by the meaning
    constraint (:func:`meaning_constraint_for`); with ``world`` the shapes world's own substitutes of that kind (its
    synonyms denote the same scene by construction, so no constraint is needed). ``out``: as :func:`build_spaces`
    (``None``: in memory)."""
    kind = kind or task_space_kind(task)
    if world:
        from dpo_diff.world.spaces import world_space

        spaces = {p: world_space(p, task, world_kind(kind)) for p in dict.fromkeys(prompts)}
        if out is not None:
            old = load_spaces(out) if Path(out).is_file() else {}
            save_spaces({**old, **spaces}.values(), out)
        return BuildReport(spaces, built=list(spaces))
    return build_spaces(prompts, kind, out=out, on_error=on_error,  # type: ignore[arg-type]
                        constraint=meaning_constraint_for(kind, similarity_threshold, similarity_model))
