"""Schemas of the input files (search spaces, the reference layout, prompt files), validated with pydantic.

Imported only by the loaders (pydantic is not needed to ``import dpo_diff``). :func:`validate` turns pydantic's
errors into one line that names the place inside the file and what was given, e.g.
``spaces[0].slots[2].options[1]: expected a string, got 5``; the loaders prefix the file name and raise their
own error type (``SpaceError``, ``PromptSetError``), which the command line prints without a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

T = TypeVar("T")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "float_type": "expected a number",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "dataclass_type": "expected an object",
    "greater_than_equal": "expected a number >= {ge}",
    "too_short": "expected at least {min_length} item(s)",
}


def show_value(value: Any, limit: int = 60) -> str:
    """A given value as it looks in JSON (``null``, ``"1"``, ``1.5``), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_loc(loc: Sequence[Any]) -> str:
    """``("spaces", 0, "slots", 2)`` -> ``spaces[0].slots[2]``; keys that are not identifiers are quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{show_value(str(part))}]"
    return out


def describe_error(err: Any, prefix: Sequence[Any] = ()) -> str:
    """One pydantic error as ``place: expected ..., got ...`` (``prefix``: the place of the validated value)."""
    err = {**err, "loc": (*prefix, *err.get("loc", ()))}
    loc = format_loc(err["loc"])
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        *parent, key = err["loc"]
        where = format_loc(parent)
        return f"{where + ': ' if where else ''}missing required key {show_value(str(key))}"
    if kind == "literal_error":
        msg = f"expected {ctx.get('expected', 'one of the allowed values')}, got {show_value(err.get('input'))}"
    elif kind in _EXPECTED:
        msg = _EXPECTED[kind].format(**ctx) + f", got {show_value(err.get('input'))}"
    else:  # our own validators: "Value error, <message>"
        msg = re.sub(r"^(?:Value|Assertion) error, ", "", str(err.get("msg", kind)))
    return f"{loc}: {msg}" if loc else msg


def validate(schema: type[T] | Any, data: Any, *, error: type[Exception], where: str, loc: Sequence[Any] = (),
             strict: bool = True) -> Any:
    """Validate ``data`` against a model class or type; raise ``error`` with one line naming the place.

    ``where`` prefixes the message (usually ``file 'x.json'``); ``loc`` is the place of ``data`` in the file. Only
    the first problem is spelled out; the count of the others follows, so a long file does not print a page.
    """
    try:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_validate(data, strict=strict)
        return TypeAdapter(schema).validate_python(data, strict=strict)
    except ValidationError as e:
        raise error(f"{where}: {_summary(e, loc)}") from None


def validate_json(adapter: TypeAdapter[Any], text: str, *, error: type[Exception], where: str,
                  loc: Sequence[Any] = ()) -> Any:
    """Like :func:`validate` for JSON text, strictly (JSON arrays are accepted for tuples)."""
    try:
        return adapter.validate_json(text, strict=True)
    except ValidationError as e:
        raise error(f"{where}: {_summary(e, loc)}") from None


def _summary(e: ValidationError, loc: Sequence[Any]) -> str:
    errors = e.errors(include_url=False)
    first = describe_error(errors[0], loc) if errors else str(e)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return first + more


class StrictModel(BaseModel):
    """Unknown keys are refused with the list of allowed ones (a typo must not be silently ignored)."""

    model_config = ConfigDict(strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(show_value(str(k)) for k in unknown)}; allowed: "
                                 f"{', '.join(cls.model_fields)}")
        return data


# ------------------------------------------------------------------ search spaces (dpo-diff/space-v1)
class SlotSchema(StrictModel):
    target: Literal["positive", "negative"]
    word: str = ""
    options: Annotated[list[str], Field(min_length=1)]
    position: Annotated[int, Field(ge=0)] | None = None
    source: str = ""


class SpaceSchema(StrictModel):
    prompt: str
    slots: list[SlotSchema]
    negative_prompt: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


class SpaceFileSchema(StrictModel):
    format: Literal["dpo-diff/space-v1"] = "dpo-diff/space-v1"
    spaces: list[SpaceSchema]


# ------------------------------------------------------------------ the reference implementation's layout
def _text_to_map(value: str) -> dict[str, list[str]]:
    """The reference's raw LLM answer (``word -> a, b`` lines) as a map; lines without an arrow are ignored."""
    out: dict[str, list[str]] = {}
    for line in value.splitlines():
        if "->" not in line:
            continue
        word, _, rest = line.partition("->")
        word = word.strip().strip("-*•0123456789.) \"'")
        if word:
            out.setdefault(word, []).extend(x.strip().strip("\"'.") for x in rest.split(",") if x.strip())
    return out


class ReferenceEntrySchema(StrictModel):
    """One prompt's entry: ``synonym``/``sub`` and ``antonym``/``opp`` as text or ``{word: [options]}``."""

    synonym: dict[str, list[str]] | None = None
    sub: dict[str, list[str]] | None = None
    antonym: dict[str, list[str]] | None = None
    opp: dict[str, list[str]] | None = None
    keywords: list[str] | None = None  # the reference uses them for human evaluation only
    prompt_id: Any = None  # bookkeeping the reference builder writes into every entry
    prompt: str | None = None

    @field_validator("synonym", "sub", "antonym", "opp", mode="before")
    @classmethod
    def _text_or_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _text_to_map(value)
        if isinstance(value, dict):  # "word": "a, b" is accepted as well as "word": ["a", "b"]
            return {k: [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v
                    for k, v in value.items()}
        if value is not None:
            raise ValueError(f"expected 'word -> a, b' text or a {{word: [options]}} object, got {show_value(value)}")
        return value


# ------------------------------------------------------------------ prompt files
class CocoCaptionsSchema(BaseModel):
    """A COCO caption annotation file: only ``annotations[*]`` objects matter (other keys are COCO's own)."""

    model_config = ConfigDict(strict=True, extra="allow")
    annotations: list[dict[str, Any]]
