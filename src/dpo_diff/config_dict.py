"""Rebuild a config dataclass from its saved dict, refusing keys the dataclass does not have (a typo or a file from
another version must not be silently ignored)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_known_keys(cls: type[T], d: dict[str, Any], *, what: str = "config",
                    error: type[Exception] = ValueError) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise error(f"unknown {what} keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)
