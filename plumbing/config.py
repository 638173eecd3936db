"""Strict conversion of plain dicts (checkpoints, store attributes) back into config dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str, *, complete: bool = False) -> T:
    """``cls(**data)``, refusing in one :class:`UserError` naming ``what`` what does not fit.

    Refused: ``data`` that is not a mapping, keys that are not fields of ``cls``
    and missing fields that have no default. With ``complete`` every field must
    be given - for records that every writer writes in full, so that a record
    of another layout is refused instead of silently taking defaults.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"the {what} is a {type(data).__name__}, not a mapping of its fields")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown {what} keys {unknown}; known: {sorted(names)}")
    no_default = dataclasses.MISSING
    missing = [
        f.name for f in fields
        if f.name not in data and (complete or (f.default is no_default and f.default_factory is no_default))
    ]
    if missing:
        raise UserError(f"the {what} lacks the keys {missing}")
    return cls(**data)
