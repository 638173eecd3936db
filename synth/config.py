"""What defines a GAN run (:class:`TrainingConfig`) and what its checkpoints record about it (:class:`SavedRun`).

A run's record - ``config.json`` and ``run.config`` in every checkpoint - is a
plain dict: ``network`` (:meth:`synth.network_config.NetworkConfig.to_dict`),
``training`` (:meth:`TrainingConfig.to_dict`), ``condition_columns``,
``augment`` (the ADA pipeline's settings), ``command`` (the command that
started the run) and, once resumed, ``resumed_with`` (the resume commands).
Checkpoints keep plain dicts so that they load with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.label_tasks import LabelTask, parse_label_task
from plumbing.config import dataclass_from_dict
from plumbing.errors import UserError
from synth.network_config import NetworkConfig

from .schedule import ProgressiveSchedule


@dataclass(frozen=True)
class TrainingConfig:
    """What defines a GAN run; saved in every checkpoint and fixed across resumes except ``kimg``.

    The defaults are ``synth.train``'s option defaults; :meth:`resolve` fills
    the automatic values of ``start_resolution``, ``gamma`` and ``ema_kimg``
    for another resolution or batch size. ``ac_weight`` weights the auxiliary
    classifier loss (0: no classifier, no extra compute); ``balance_task``
    names the label task whose classes the training images are drawn evenly
    from (``v3-0s``, :func:`balance_label_task`; ``None``: every image alike).
    """

    data: str = "phantom"
    data_length: int | None = None
    resolution: int = 64
    start_resolution: int = 64
    fade_kimg: float = 2.0
    stable_kimg: float = 2.0
    batch_size: int = 16
    lr: float = 0.0025
    gamma: float = 0.0002 * 64**2 / 16
    r1_interval: int = 16
    pl_weight: float = 0.0
    mixing: float = 0.9
    ema_kimg: float = 16 * 10 / 32
    no_ada: bool = False
    ada_target: float = 0.6
    ada_kimg: float = 100.0
    seed: int = 0
    cache: bool = False
    snapshot_kimg: float = 1.0
    kimg: float = 10.0
    ac_weight: float = 0.0
    balance_task: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        start_resolution: int | None = None,
        gamma: float | None = None,
        ema_kimg: float | None = None,
        **options: Any,
    ) -> TrainingConfig:
        """A configuration with automatic values for the options given as ``None``.

        ``start_resolution`` defaults to ``resolution`` (no growing); ``gamma``
        to ``0.0002 * resolution^2 / batch_size`` (StyleGAN2-ADA's "auto");
        ``ema_kimg`` to ``batch_size * 10 / 32``.
        """
        base = cls(**options)
        r, b = base.resolution, base.batch_size
        task = balance_label_task(base.balance_task)
        return dataclasses.replace(
            base,
            start_resolution=start_resolution or r,
            gamma=gamma if gamma is not None else 0.0002 * r**2 / b,
            ema_kimg=ema_kimg if ema_kimg is not None else b * 10 / 32,
            balance_task=None if task is None else task.name,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Inverse of :meth:`to_dict`; every run writes every key, so a missing or unknown one is a UserError.

        Records written before the keys of :data:`ADDED_KEYS` existed lack
        them and trained as their defaults, which they get.
        """
        if isinstance(data, dict):
            data = {f.name: f.default for f in dataclasses.fields(cls) if f.name in ADDED_KEYS} | data
        return dataclass_from_dict(cls, data, "training configuration", complete=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def schedule(self) -> ProgressiveSchedule:
        """The progressive-growing schedule; a start resolution that does not divide the target is a UserError."""
        try:
            return ProgressiveSchedule(self.start_resolution, self.resolution, self.fade_kimg, self.stable_kimg)
        except ValueError as exc:
            raise UserError(str(exc)) from None


ADDED_KEYS: tuple[str, ...] = ("ac_weight", "balance_task")
"""Training keys added after runs were first recorded (their defaults reproduce those runs)."""


def balance_label_task(text: str | None) -> LabelTask | None:
    """The label task of ``--balance-task`` (``3-0s`` or ``v3-0s``, any case; ``None``: no balancing).

    A malformed value is one :class:`UserError` line naming the valid tasks.
    """
    if text is None:
        return None
    return parse_label_task(text, "--balance-task")


RECORD_KEYS = ("network", "training", "condition_columns", "augment", "command")
"""Keys of a run's record that every run writes (``resumed_with`` follows the first resume)."""


@dataclass(frozen=True)
class SavedRun:
    """What a ``synth.train`` checkpoint records about its run (read by :func:`saved_run`)."""

    record: dict[str, Any]
    training: TrainingConfig
    network: NetworkConfig
    iteration: int


def saved_run(checkpoint: Any, path: Path) -> SavedRun:
    """The run record of a ``synth.train`` checkpoint; anything else is one :class:`UserError` naming ``path``."""
    try:
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("run"), dict):
            raise UserError("no 'run' entry")
        if "G_ema" not in checkpoint:
            raise UserError("no 'G_ema' entry")
        run = checkpoint["run"]
        record = run.get("config")
        if not isinstance(record, dict):
            raise UserError("no 'run.config' entry")
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise UserError(f"its run record lacks {', '.join(missing)}")
        if not isinstance(record["condition_columns"], list):
            raise UserError("its condition_columns are not a list")
        if not isinstance(run.get("iteration"), int):
            raise UserError("no 'run.iteration' entry")
        return SavedRun(
            record, TrainingConfig.from_dict(record["training"]), NetworkConfig.from_dict(record["network"]),
            run["iteration"],
        )
    except (UserError, TypeError) as exc:
        raise UserError(f"{path} is not a synth.train checkpoint of this version ({exc})") from None
