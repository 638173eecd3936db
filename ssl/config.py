"""What determines a pretext step and a curriculum run (frozen dataclasses, recorded in every run folder).

A :class:`StepConfig` holds everything a step's result depends on - the
images, the task and its settings, the backbone, size, schedule, the
learning-rate choice and the monitor that makes it, the seed, where it
starts (``scratch``, ``imagenet`` or the key of the step before it) and how it ran: bf16 or not,
the number of processes (views are drawn per process, batch norm and
SwAV's queue are per process) and, for a synthetic store read in blocks,
the loader's workers (the block order depends on them) - and :meth:`StepConfig.key`
is the SHA-256 of its canonical JSON: two curricula with the same prefix ask
for the same keys and share the steps (:mod:`ssl.step_store`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluate.protocol.training import FinetuneConfig
from plumbing.config import dataclass_from_dict

KEY_LENGTH = 16


def _without_absent_monitor(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not (k == "monitor" and v is None)}


@dataclass(frozen=True)
class StepConfig:
    task: str
    settings: dict[str, Any]
    data: tuple[str, ...]
    max_images: int | None
    backbone: str
    image_size: int
    epochs: int
    batch_size: int
    lr: float | None
    lr_grid: tuple[float, ...]
    lr_trial_epochs: int
    weight_decay: float
    momentum: float
    seed: int
    start: str
    bf16: bool
    processes: int
    store_workers: int | None
    monitor: dict[str, Any] | None = None
    """The monitor's :class:`ssl.monitor.MonitorConfig` record (``None``: no monitor): it chooses the rate."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (its key's text); without a monitor there is no ``monitor`` entry, so a step recorded
        before the monitor existed keeps its key."""
        out = asdict(self) | {"data": list(self.data), "lr_grid": list(self.lr_grid)}
        return json.loads(json.dumps(_without_absent_monitor(out)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepConfig:
        cfg = dataclass_from_dict(cls, data, "pretext step configuration", complete=True)
        return cls(**{**asdict(cfg), "data": tuple(cfg.data), "lr_grid": tuple(cfg.lr_grid)})

    def key(self) -> str:
        """``<task>-<16 hex digits>``: the task and the SHA-256 of the canonical JSON of every field."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return f"{self.task}-{hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]}"


@dataclass(frozen=True)
class CurriculumConfig:
    """A curriculum run: its ordered tasks (empty: the ``none`` baseline), its steps' shared settings, the
    per-task setting overrides, the backbone's start and the downstream protocol."""

    tasks: tuple[str, ...]
    overrides: dict[str, dict[str, Any]]
    data: tuple[str, ...]
    max_images: int | None
    init: str
    backbone: str
    image_size: int
    epochs: int
    batch_size: int
    lr: float | None
    lr_grid: tuple[float, ...]
    lr_trial_epochs: int
    weight_decay: float
    momentum: float
    seed: int
    downstream: FinetuneConfig = field(default_factory=FinetuneConfig)
    monitor: dict[str, Any] | None = None
    """The steps' monitor (:class:`ssl.monitor.MonitorConfig` record; ``None``: none)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON record; without a monitor there is no ``monitor`` entry (as :meth:`StepConfig.to_dict`)."""
        out = asdict(self) | {"tasks": list(self.tasks), "data": list(self.data), "lr_grid": list(self.lr_grid)}
        return json.loads(json.dumps(_without_absent_monitor(out | {"downstream": self.downstream.to_dict()})))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurriculumConfig:
        values = dict(data)
        values["downstream"] = FinetuneConfig.from_dict(values.get("downstream", {}))
        cfg = dataclass_from_dict(cls, values, "curriculum configuration", complete=True)
        return cls(**{**cfg.__dict__, "tasks": tuple(cfg.tasks), "data": tuple(cfg.data),
                      "lr_grid": tuple(cfg.lr_grid)})

    def label(self) -> str:
        """The ordering as the runs table shows it: ``rotation>moco``, ``none`` (scratch) or ``imagenet``."""
        if self.tasks:
            return ">".join(self.tasks) + (" (imagenet)" if self.init == "imagenet" else "")
        return "imagenet" if self.init == "imagenet" else "none"
