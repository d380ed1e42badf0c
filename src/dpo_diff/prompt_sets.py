"""Prompt sets for benchmarks: read user prompts from the files researchers have, clean them, say what was dropped.

Formats (chosen by extension; ``format=`` overrides):

* ``.txt``: one prompt a line (``#`` starts a comment line).
* ``.json``: a list of strings, an object keyed by prompt (the reference implementation's ``{prompt: loss}`` files
  and the output of ``dpo-diff select``), or a COCO caption annotation file (``{"annotations": [{"caption": ...}]}``).
* ``.jsonl``: one JSON string, or one object with the prompt column, a line.
* ``.csv`` / ``.tsv``: a named column (default: the first of ``prompt``, ``caption``, ``text``).
* ``.parquet``: a named column, same default; DiffusionDB's ``metadata.parquet`` works as is (column ``prompt``,
  one row per image, so prompts repeat and are deduplicated). Needs ``pyarrow`` (``pip install dpo-diff[prompts]``).
* ``world:<easy|hard>:<n>[:<seed>]``: held-out prompts of the bundled shapes world (no file).
* ``hf:DATASET[:CONFIG][:SPLIT][:COLUMN]``: a column of a dataset read with the ``datasets`` library (a hub id,
  through its cache and offline mode; a folder written by ``save_to_disk``; a folder of data files). Empty fields
  take defaults (``hf:nateraw/parti-prompts::train:Prompt``); a column of lists (several captions per image) is
  flattened. Needs ``datasets`` (``pip install dpo-diff[prompts]``).

Every prompt is stripped and its whitespace collapsed; exact duplicates (ignoring case) are dropped, and so are
empty entries, non-text entries (numbers, nulls, strings without a letter) and prompts longer than the text
encoder's 77 tokens (Stable Diffusion would silently truncate them). :class:`PromptSet` reports the counts.

Example::

    ps = read_prompt_set("metadata.parquet")
    print(ps.summary())   # "metadata.parquet: 1000 rows -> 812 prompts (dropped: 180 duplicate, 8 too long)"
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_COLUMNS = ("prompt", "caption", "text")
MAX_TOKENS = 77  # CLIP text encoders of Stable Diffusion take 77 tokens including BOS and EOS
REASONS = ("empty", "non-text", "duplicate", "too long")
_WORLD_RE = re.compile(r"^world:(easy|hard):(\d+)(?::(\d+))?$")
_LETTER_RE = re.compile(r"[^\W\d_]")
_EXAMPLES = 3  # dropped entries kept per reason, to show in messages


class PromptSetError(ValueError):
    """A prompt file cannot be read or holds no usable prompt."""


@dataclass
class PromptSet:
    """Clean, deduplicated prompts and what was dropped on the way (``dropped``: reason -> count)."""

    prompts: list[str]
    source: str
    format: str
    total: int  # raw entries read
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few dropped entries per reason

    def summary(self) -> str:
        parts = [f"{n} {reason}" for reason, n in self.dropped.items() if n]
        why = f" (dropped: {', '.join(parts)})" if parts else ""
        return f"{self.source}: {self.total} entries -> {len(self.prompts)} prompts{why}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "total": self.total, "kept": len(self.prompts),
                "dropped": dict(self.dropped), "examples": {k: list(v) for k, v in self.examples.items()}}


def clip_token_counter() -> Callable[[str], int]:
    """Token count (with BOS/EOS) under the vendored CLIP BPE of Stable Diffusion 1.x/2.x (imports transformers)."""
    from dpo_diff.tokenization import load_tokenizer

    tok = load_tokenizer(None)
    return lambda text: len(tok(text, truncation=False).input_ids)


def read_prompt_set(path: str | os.PathLike[str], *, column: str | None = None, format: str | None = None,
                    max_tokens: int | None = MAX_TOKENS,
                    count_tokens: Callable[[str], int] | None = None) -> PromptSet:
    """Read and clean the prompts of ``path`` (see the module docstring for formats).

    Args:
        path: a prompt file, ``world:<easy|hard>:<n>[:<seed>]`` or ``hf:DATASET[:CONFIG][:SPLIT][:COLUMN]``.
        column: the column (CSV/Parquet/JSONL objects) holding the prompts; default: ``prompt``/``caption``/``text``.
        format: ``txt``, ``json``, ``jsonl``, ``csv``, ``tsv`` or ``parquet`` (default: from the extension).
        max_tokens: drop prompts with more tokens than this (``None``: keep all).
        count_tokens: ``text -> tokens`` (default: the vendored CLIP tokenizer, loaded only if some prompt could be
            too long).

    Raises:
        FileNotFoundError: the file does not exist.
        PromptSetError: the file cannot be parsed, lacks the column, or yields no prompt.
    """
    spec = str(path)
    m = _WORLD_RE.match(spec)
    if m:
        from dpo_diff.world.prompts import heldout_prompts

        raw: list[Any] = heldout_prompts(m.group(1), int(m.group(2)), seed=int(m.group(3) or 0))
        fmt = "world"
    elif spec.startswith("world:"):  # never read as a file name
        raise PromptSetError(f"bad prompt set {spec!r}: use world:<easy|hard>:<n>[:<seed>], n a positive count and "
                             f"seed a non-negative integer, e.g. world:hard:50")
    elif spec.startswith("hf:"):
        raw, fmt = _read_hf(spec, column), "hf"
    else:
        p = Path(spec)
        if not p.exists():
            raise FileNotFoundError(f"prompt file {spec!r} does not exist")
        if not p.is_file():
            raise PromptSetError(f"prompt file {spec!r} is not a file")
        fmt = (format or p.suffix.lstrip(".")).lower()
        readers = {"txt": _read_txt, "json": _read_json, "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv,
                   "parquet": _read_parquet}
        if fmt not in readers:
            raise PromptSetError(f"prompt file {spec!r}: unknown format {fmt!r}; use one of {sorted(readers)} "
                                 "(or pass format=)")
        try:
            raw = readers[fmt](p, column)
        except PromptSetError:
            raise
        except UnicodeDecodeError as e:
            raise PromptSetError(f"prompt file {spec!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise PromptSetError(f"prompt file {spec!r} cannot be read: {e}") from None
        except (ValueError, RecursionError, csv.Error) as e:  # e.g. a 5000-digit number, [[[[...]]]], a bad CSV
            raise PromptSetError(f"prompt file {spec!r} cannot be parsed as {fmt}: {str(e)[:200]}") from None
    ps = clean_prompts(raw, max_tokens=max_tokens, count_tokens=count_tokens)
    ps.source, ps.format = spec, fmt
    if not ps.prompts:
        raise PromptSetError(f"prompt file {spec!r} holds no usable prompt: {ps.summary()}")
    return ps


def clean_prompts(raw: Iterable[Any], *, max_tokens: int | None = MAX_TOKENS,
                  count_tokens: Callable[[str], int] | None = None) -> PromptSet:
    """Strip, collapse whitespace, dedupe (case-insensitively, first spelling kept) and drop unusable entries."""
    kept: list[str] = []
    seen: set[str] = set()
    dropped = dict.fromkeys(REASONS, 0)
    examples: dict[str, list[str]] = {}
    total = 0

    def drop(reason: str, value: Any) -> None:
        dropped[reason] += 1
        ex = examples.setdefault(reason, [])
        if len(ex) < _EXAMPLES:
            ex.append(repr(value)[:120])

    counter = count_tokens
    for value in raw:
        total += 1
        if not isinstance(value, str):
            drop("empty" if value is None else "non-text", value)
            continue
        text = " ".join(value.split())
        if not text:
            drop("empty", value)
            continue
        if not _LETTER_RE.search(text):
            drop("non-text", value)
            continue
        key = text.casefold()
        if key in seen:
            drop("duplicate", text)
            continue
        seen.add(key)
        # A CLIP BPE token covers at least one UTF-8 byte and spaces are not tokens, so a prompt with at most
        # max_tokens - 2 bytes fits for sure; only longer ones need the (slow) tokenizer.
        if max_tokens is not None and len(text.encode()) + 2 > max_tokens:
            if counter is None:
                counter = clip_token_counter()
            if counter(text) > max_tokens:
                drop("too long", text)
                continue
        kept.append(text)
    return PromptSet(kept, "", "", total, {k: v for k, v in dropped.items() if v}, examples)


# ---------------------------------------------------------------- readers: each returns the raw entries
def _read_txt(p: Path, column: str | None) -> list[Any]:
    lines = p.read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if not ln.lstrip().startswith("#")]


def _read_json(p: Path, column: str | None) -> list[Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PromptSetError(f"prompt file {str(p)!r} is not valid JSON: {e}") from None
    if isinstance(data, Mapping) and "annotations" in data and (isinstance(data["annotations"], list)
                                                                 or isinstance(data.get("images"), list)):
        # COCO caption annotations: {"images": [...], "annotations": [{"image_id", "id", "caption"}, ...]}
        from dpo_diff.schemas import CocoCaptionsSchema, validate

        coco = validate(CocoCaptionsSchema, data, error=PromptSetError, where=f"prompt file {str(p)!r}")
        col = column or "caption"
        return [a.get(col) for a in coco.annotations]
    if isinstance(data, Mapping):
        return list(data)  # {prompt: value}, as the reference implementation's prompt files
    if isinstance(data, list):
        return [_pick(x, column, p, f"[{i}]") if isinstance(x, Mapping) else x for i, x in enumerate(data)]
    raise PromptSetError(f"prompt file {str(p)!r} must hold a list of prompts, an object keyed by prompt or COCO "
                         f"caption annotations; got a JSON {type(data).__name__}")


def _read_jsonl(p: Path, column: str | None) -> list[Any]:
    out: list[Any] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            x = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptSetError(f"prompt file {str(p)!r}, line {i}: not valid JSON: {e}") from None
        out.append(_pick(x, column, p, f"line {i}") if isinstance(x, Mapping) else x)
    return out


def _pick(row: Mapping[str, Any], column: str | None, p: Path, where: str) -> Any:
    col = column or next((c for c in DEFAULT_COLUMNS if c in row), None)
    if col is None or col not in row:
        raise PromptSetError(f"prompt file {str(p)!r}, {where}: the object has no {column or 'prompt/caption/text'!r}"
                             f" field (fields: {sorted(row)[:10]}); pass the column name")
    return row[col]


def _choose_column(names: list[str], column: str | None, p: Path) -> str:
    if column is not None:
        if column not in names:
            raise PromptSetError(f"prompt file {str(p)!r} has no column {column!r}; columns: {names}")
        return column
    for c in DEFAULT_COLUMNS:
        if c in names:
            return c
    raise PromptSetError(f"prompt file {str(p)!r}: no 'prompt', 'caption' or 'text' column (columns: {names}); "
                         f"name the column holding the prompts")


def _read_csv(p: Path, column: str | None) -> list[Any]:
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        names = list(reader.fieldnames or [])
        if not names:
            raise PromptSetError(f"prompt file {str(p)!r} is empty (a CSV needs a header row)")
        col = _choose_column(names, column, p)
        return [row.get(col) for row in reader]


def _read_parquet(p: Path, column: str | None) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise PromptSetError("reading Parquet needs pyarrow: pip install 'dpo-diff[prompts]'") from e
    try:
        schema = pq.read_schema(p)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends for non-Parquet files
        raise PromptSetError(f"prompt file {str(p)!r} is not a readable Parquet file: {e}") from e
    col = _choose_column(list(schema.names), column, p)
    # Only the prompt column is read: DiffusionDB's metadata has a dozen more per image.
    return pq.read_table(p, columns=[col]).column(col).to_pylist()


# ---------------------------------------------------------------- hf:DATASET[:CONFIG][:SPLIT][:COLUMN]
HF_GRAMMAR = ("hf:DATASET[:CONFIG][:SPLIT][:COLUMN] (empty fields take defaults, e.g. "
              "hf:nateraw/parti-prompts::train:Prompt)")
_TEXT_DTYPES = ("string", "large_string")
_HF_FIELD_RE = re.compile(r":(?![^\[]*\])")  # a colon inside a split slice such as train[:100] separates nothing


def _read_hf(spec: str, column: str | None) -> list[Any]:
    """The raw entries of one text column of one split of a ``datasets`` dataset (lists of texts flattened)."""
    fields = _HF_FIELD_RE.split(spec[len("hf:"):])
    if len(fields) > 4 or not fields[0].strip():
        raise PromptSetError(f"prompt set {spec!r}: expected {HF_GRAMMAR}")
    path, config, split, col = (f.strip() or None for f in fields + [""] * (4 - len(fields)))
    if col and column and col != column:
        raise PromptSetError(f"prompt set {spec!r} names column {col!r} but --column says {column!r}; give one")
    try:
        import datasets
    except ImportError as e:
        raise PromptSetError(f"prompt set {spec!r} needs the datasets library: pip install 'dpo-diff[prompts]'") from e
    ds = _hf_saved_split(datasets, spec, Path(str(path)), config, split) or _hf_split(datasets, spec, str(path),
                                                                                      config, split)
    name = _hf_column(ds, col or column, spec)
    out: list[Any] = []
    for value in ds[name]:
        if isinstance(value, list):  # COCO-style sets hold several captions per image in one cell: each is one
            out.extend(value)
        else:
            out.append(value)
    return out


def _pick_split(splits: list[str], split: str | None, spec: str) -> str:
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise PromptSetError(f"prompt set {spec!r}: the dataset has splits {splits}; name one as the third field "
                             f"({HF_GRAMMAR})")
    if split.partition("[")[0] not in splits:  # datasets' slices ("train[:100]") are of a split that exists
        raise PromptSetError(f"prompt set {spec!r}: no split {split!r}; splits: {splits} ({HF_GRAMMAR})")
    return split


def _hf_saved_split(datasets: Any, spec: str, folder: Path, config: str | None, split: str | None) -> Any:
    """A folder written by ``save_to_disk`` (a Dataset or a DatasetDict), or None for anything else."""
    if not ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        return None
    if config is not None:
        raise PromptSetError(f"prompt set {spec!r}: {str(folder)!r} is a save_to_disk folder, which has no "
                             f"configs; leave CONFIG empty ({HF_GRAMMAR})")
    if split is not None and "[" in split:
        raise PromptSetError(f"prompt set {spec!r}: split slices ({split!r}) work on hub datasets and data folders, "
                             "not on save_to_disk folders; name the whole split")
    saved = datasets.load_from_disk(str(folder))
    if isinstance(saved, datasets.DatasetDict):
        return saved[_pick_split(list(saved), split, spec)]
    own = str(saved.split) if saved.split is not None else None
    if split is not None and split != own:
        raise PromptSetError(f"prompt set {spec!r}: {str(folder)!r} holds a single dataset (split {own!r}), not "
                             f"a split {split!r}; leave SPLIT empty")
    return saved


def _hf_split(datasets: Any, spec: str, path: str, config: str | None, split: str | None) -> Any:
    """One split of a hub dataset or a data folder, as ``load_dataset`` builds it (cache, offline mode)."""
    builder = _hf_builder(datasets, spec, path, config)
    # the data files' split keys are known before anything is downloaded; a builder with metadata lists its splits
    splits = [str(k) for k in (builder.config.data_files or builder.info.splits or {})]
    name = _pick_split(splits, split, spec) if splits else (split or "train")
    try:
        builder.download_and_prepare()
        return builder.as_dataset(split=name)
    except ConnectionError as e:
        raise PromptSetError(_hf_unreachable(datasets, spec, path, e)) from None
    except ValueError as e:  # e.g. an unknown split of a builder that could not list its splits up front
        raise PromptSetError(f"prompt set {spec!r}: {e}") from None


def _hf_builder(datasets: Any, spec: str, path: str, config: str | None) -> Any:
    try:
        return datasets.load_dataset_builder(path, config)
    except ConnectionError as e:
        raise PromptSetError(_hf_unreachable(datasets, spec, path, e)) from None
    except FileNotFoundError as e:  # DatasetNotFoundError: no such hub id (or private/gated) and no such folder
        raise PromptSetError(f"prompt set {spec!r}: no dataset {path!r} on the Hub or as a local folder ({e}); "
                             "a private or gated dataset needs `hf auth login`") from None
    except RuntimeError as e:  # datasets >= 4 runs no loading scripts
        raise PromptSetError(f"prompt set {spec!r}: {e}. The installed datasets library no longer runs dataset "
                             "scripts: point at the data files instead (a folder of Parquet/CSV/JSON files, or "
                             "one file as --prompts FILE)") from None
    except ValueError as e:  # a config that does not exist, or one is required
        configs = _hf_configs(datasets, path)
        raise PromptSetError(f"prompt set {spec!r}: {e}" + (f" (configs: {configs})" if configs else "")
                             + f"; the config is the second field ({HF_GRAMMAR})") from None


def _hf_configs(datasets: Any, path: str) -> list[str]:
    try:
        return list(datasets.get_dataset_config_names(path))
    except Exception:  # only decorates an error message: the original error is what the user needs
        return []


def _hf_unreachable(datasets: Any, spec: str, path: str, e: Exception) -> str:
    local = ("or point at a local copy: hf:FOLDER for a folder written by save_to_disk or a folder of "
             "Parquet/CSV/JSON data files (e.g. `hf download ID --repo-type dataset --local-dir FOLDER`)")
    if datasets.config.HF_HUB_OFFLINE:
        return (f"prompt set {spec!r}: dataset {path!r} is not in the datasets cache "
                f"({datasets.config.HF_DATASETS_CACHE}) and offline mode is on (HF_DATASETS_OFFLINE or "
                f"HF_HUB_OFFLINE), so it cannot be downloaded: load it once with the network "
                f"(unset HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), {local}")
    return (f"prompt set {spec!r}: cannot reach the Hub for dataset {path!r} ({e}); with a cached copy set "
            f"HF_DATASETS_OFFLINE=1, {local}")


def _hf_column(ds: Any, column: str | None, spec: str) -> str:
    """The text column: the one named, else the first of prompt/caption/text in any case."""
    features = ds.features
    text = [n for n in ds.column_names if _is_text(features[n])]
    if column is not None:
        if column not in ds.column_names:
            raise PromptSetError(f"prompt set {spec!r} has no column {column!r}; columns: {ds.column_names} "
                                 f"(text: {text})")
        if column not in text:
            raise PromptSetError(f"prompt set {spec!r}: column {column!r} holds {features[column]}, not text; "
                                 f"text columns: {text}")
        return column
    folded = {n.casefold(): n for n in reversed(text)}  # the first of equal spellings wins
    for c in DEFAULT_COLUMNS:
        if c in folded:
            return folded[c]
    raise PromptSetError(f"prompt set {spec!r}: no prompt/caption/text column (text columns: {text}); name it as "
                         f"the fourth field ({HF_GRAMMAR}) or with --column")


def _is_text(feature: Any) -> bool:
    """A string column, or a column of lists of strings (``List``/``Sequence``/``LargeList`` of ``Value``)."""
    inner = getattr(feature, "feature", None)
    if inner is not None and not isinstance(feature, dict):
        feature = inner
    return getattr(feature, "dtype", None) in _TEXT_DTYPES
