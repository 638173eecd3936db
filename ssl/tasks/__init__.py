"""The pretext tasks, one registry table of names to specs (each task a module of this package).

:func:`task_settings` builds a task's settings from its defaults and
``key=value`` overrides (``--set moco.queue_length=4096``), converting each
value to the field's type; an unknown task or setting is one error line
that lists the known ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plumbing.config import dataclass_from_dict
from plumbing.errors import UserError
from plumbing.lookup import look_up

from .base import PretextTask, TaskContext
from .moco import Moco, MocoSettings
from .odc import Odc, OdcSettings
from .relloc import RelativeLocation, RelativeLocationSettings
from .rotation import Rotation, RotationSettings
from .swav import Swav, SwavSettings

__all__ = [
    "TASKS", "PretextTask", "TaskContext", "TaskSpec", "get_task", "overrides_record", "settings_record", "task_names",
    "task_settings",
]


@dataclass(frozen=True)
class TaskSpec:
    """A registered pretext task: its module's class and its settings type."""

    name: str
    description: str
    task: type[PretextTask]
    settings: type


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("relloc", "Relative Location: the position of a 3x3-grid patch relative to the centre",
                 RelativeLocation, RelativeLocationSettings),
        TaskSpec("rotation", "Rotation: which of 0/90/180/270 degrees", Rotation, RotationSettings),
        TaskSpec("moco", "MoCo v2: contrastive, momentum key encoder and a queue", Moco, MocoSettings),
        TaskSpec("swav", "SwAV: swapped prediction of Sinkhorn cluster codes over multi-crops", Swav,
                 SwavSettings),
        TaskSpec("odc", "ODC: online deep clustering with a memory bank", Odc, OdcSettings),
    )
}  # fmt: skip


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task; a :class:`UserError` names the known ones."""
    return look_up("pretext task", name, TASKS)


def _typed(task: str, key: str, value: Any, default: Any) -> Any:
    """``value`` (JSON text or a value) as the type of the field's ``default``; one error line otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and len(value) == len(default)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{task}.{key}={value!r}: expected a value like {default!r}")
    return value


def task_settings(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The settings of task ``name``: its defaults with ``overrides`` (values as given or as JSON text)."""
    spec = get_task(name)
    defaults = dataclasses.asdict(spec.settings())
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise UserError(f"{name} has no setting {', '.join(unknown)}; its settings: {known}")
    values = defaults | {k: _typed(name, k, v, defaults[k]) for k, v in (overrides or {}).items()}
    return dataclass_from_dict(spec.settings, values, f"{name} settings")


def overrides_record(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overridden settings of task ``name`` alone, typed as the settings hold them, as plain JSON values."""
    settings = dataclasses.asdict(task_settings(name, overrides))
    return json.loads(json.dumps({k: settings[k] for k in sorted(overrides)}))


def settings_record(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting of task ``name`` (defaults and ``overrides``) as plain JSON values, for a step's key."""
    return json.loads(json.dumps(dataclasses.asdict(task_settings(name, overrides))))
