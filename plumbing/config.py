"""Strict conversion of plain dicts (checkpoints, store attributes) back into config dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)``; keys that are not fields of ``cls`` raise one :class:`UserError` naming ``what``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown {what} keys {unknown}; known: {sorted(names)}")
    return cls(**data)
