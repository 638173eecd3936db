"""One look-up for every registry of names (data sets, backbones, pretext tasks, presets, ...).

A registry is a plain table of names (a mapping of names to specs, or a
sequence of names). :func:`look_up` returns the entry of a name; a name the
table lacks is one :class:`~plumbing.errors.UserError` line in one wording for
every kind (:func:`unknown_name`), which names the kind and the given name,
suggests the closest known name where one is close, and lists every known
name in the table's order::

    unknown data set 'chexpret'; did you mean 'chexpert'? (known: chexpert, chestxray8, ...)
    unknown backbone 'vit' (known: densenet121, resnet18, ...)

The suggestion is :func:`difflib.get_close_matches` (ratio at least
:data:`CLOSE`) on lower-cased names, so a change of case alone is suggested
too. As MONAI's ``look_up_option``, but one error type and one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import TypeVar, overload

from .errors import UserError

V = TypeVar("V")

CLOSE = 0.6
"""The least :class:`difflib.SequenceMatcher` ratio of a suggested name to the given one."""


def _closest_name(name: object, known: Collection[str]) -> str | None:
    """The known name closest to ``name`` (ratio >= :data:`CLOSE`, case ignored), or ``None``."""
    if not isinstance(name, str):
        return None
    lowered: dict[str, str] = {}
    for k in known:
        lowered.setdefault(k.lower(), k)  # of names equal but for case, the first is suggested
    found = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=CLOSE)
    return lowered[found[0]] if found else None


def unknown_name(kind: str, name: object, known: Collection[str]) -> str:
    """The one-line message for ``name``, which is not a known ``kind`` (module docstring)."""
    names = ", ".join(known) if known else "none"
    closest = _closest_name(name, known)
    hint = f"; did you mean {closest!r}?" if closest is not None else ""
    return f"unknown {kind} {name!r}{hint} (known: {names})"


@overload
def look_up(kind: str, name: object, table: Mapping[str, V], *, option: str | None = None) -> V: ...


@overload
def look_up(kind: str, name: object, table: Collection[str], *, option: str | None = None) -> str: ...


def look_up(kind: str, name: object, table: Mapping[str, V] | Collection[str], *, option: str | None = None) -> V | str:
    """The entry of ``name`` in ``table`` (for a sequence of names: the name itself).

    Args:
        kind: what the table holds, singular, as a user says it (``data set``, ``backbone``).
        name: the name asked for; any value that is not a key of ``table`` is refused.
        table: a mapping of names to entries, or a collection of names.
        option: the command-line option the name came from; when given, the
            message starts with ``"<option>: "``.

    Raises:
        UserError: ``name`` is not in ``table`` (:func:`unknown_name`).
    """
    if isinstance(name, str) and name in table:
        return table[name] if isinstance(table, Mapping) else name
    message = unknown_name(kind, name, list(table))
    raise UserError(message if option is None else f"{option}: {message}")
