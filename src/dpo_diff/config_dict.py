"""Rebuild a config dataclass from its saved dict, refusing keys the dataclass does not have (a typo or a file from
another version must not be silently ignored) and values of the wrong type (checked against the field's annotation
with pydantic, so the error names the key: ``budget: expected a number, got "x"``)."""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_known_keys(cls: type[T], d: dict[str, Any], *, what: str = "config",
                    error: type[Exception] = ValueError) -> T:
    if not isinstance(d, dict):
        from dpo_diff.schemas import show_value

        raise error(f"{what}: expected an object, got {show_value(d)}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise error(f"unknown {what} keys {sorted(unknown)}; known: {sorted(known)}")
    check_types(cls, d, what=what, error=error)
    return cls(**d)


def check_types(cls: type, d: dict[str, Any], *, what: str, error: type[Exception]) -> None:
    """Check each value against its field's annotation (as JSON, strictly: ``"1"`` is no integer, a list is a
    tuple). Fields whose annotation pydantic cannot check are left to the dataclass's own validation."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved here: nothing to check against
        return
    from pydantic import TypeAdapter

    from dpo_diff.schemas import validate_json

    for name, value in d.items():
        try:
            adapter = TypeAdapter(hints[name])
            text = json.dumps(value)
        except Exception:  # no pydantic schema for this annotation, or a value that is not JSON
            continue
        validate_json(adapter, text, error=error, where=what, loc=(name,))
