"""Checks of data-set option values: each returns the value or raises a one-line :class:`UserError`.

``owner`` (the data set's name) and ``name`` (the option's) start the
message, which says what was expected: ``chexpert: max_samples must be a
whole number of at least 1, not 2.5``. Booleans are not numbers here
(``max_samples=True`` is a mistake, not 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from plumbing.errors import UserError


def is_integer(value: Any) -> bool:
    """An ``int`` or numpy integer, not a ``bool``."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def integer(owner: str, name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (at least ``minimum`` when given)."""
    if not is_integer(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" of at least {minimum}"
        raise UserError(f"{owner}: {name} must be a whole number{bound}, not {value!r}")
    return int(value)


def fraction(owner: str, name: str, value: Any, *, closed: bool) -> float:
    """``value`` as a ``float`` in [0, 1] (``closed``) or in (0, 1)."""
    inside = _is_number(value) and (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0)
    if not inside:
        interval = "[0, 1]" if closed else "between 0 and 1 (exclusive)"
        raise UserError(f"{owner}: {name} must be a number in {interval}, not {value!r}")
    return float(value)


def flag(owner: str, name: str, value: Any) -> bool:
    """``value`` as a ``bool``; only ``True`` and ``False`` are accepted."""
    if not isinstance(value, bool | np.bool_):
        raise UserError(f"{owner}: {name} must be True or False, not {value!r}")
    return bool(value)


def choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value``, one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"{owner}: {name} must be one of {', '.join(choices)}, not {value!r}")
    return value
