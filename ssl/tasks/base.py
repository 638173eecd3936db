"""The interface every pretext task implements, and what a task learns about its run.

A task is an ``nn.Module`` that holds the shared backbone (``self.backbone``,
an :class:`models.backbones.Backbone`) and its own heads and buffers (a
queue, prototypes, a memory bank). The trainer (:mod:`ssl.trainer`) calls:

- :meth:`PretextTask.initialise` once before the first step of a fresh
  step (not on resume: the state is in the checkpoint) with an iterable of
  ``(images, indices)`` over every training image - ODC's k-means start;
- :meth:`PretextTask.start_epoch` at the start of every epoch - SwAV's frozen
  prototypes in the first epoch;
- :meth:`PretextTask.loss` on a batch of this process's images ``[B, C, H,
  W]`` in ``[0, 1]`` on the device, with their dataset indices ``[B]`` and a
  CPU generator for the views; it returns the loss to minimise and the
  numbers to log;
- :meth:`PretextTask.after_step` after the optimiser step - ODC's memory
  update and centroid refresh (MoCo moves its key encoder at the start of
  :meth:`PretextTask.loss`, before the keys are computed).

Gradients are averaged over the processes by the trainer; a task that needs
global quantities (MoCo's queue and shuffled keys, SwAV's Sinkhorn, ODC's
memory bank) gathers them itself through :mod:`plumbing.distributed`. The
backbone is all that outlives a step: heads are dropped between the steps of
a curriculum.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.backbones import Backbone
from plumbing.errors import UserError


@dataclass(frozen=True)
class TaskContext:
    """What a task knows of its run: the image size, the number of images, the global batch, the step's seed and
    how many optimiser steps the run takes (a schedule spans them)."""

    image_size: int
    num_images: int
    batch_size: int
    seed: int
    total_steps: int


def in_unit_interval(settings: Any, *names: str) -> dict[str, bool]:
    """``{"0 <= name <= 1": ok}`` for the probabilities and fractions ``names`` of ``settings``."""
    return {f"0 <= {n} <= 1": 0 <= getattr(settings, n) <= 1 for n in names}


def check_settings(task: str, conditions: Mapping[str, bool]) -> None:
    """One :class:`UserError` line naming the first of ``conditions`` (``{"temperature > 0": ok}``) that fails."""
    for condition, ok in conditions.items():
        if not ok:
            raise UserError(f"{task} settings: {condition} is required")


class PretextTask(nn.Module, ABC):
    """A backbone with a task's heads (module docstring); subclasses set ``name`` and implement :meth:`loss`."""

    name = ""

    def __init__(self, backbone: Backbone, settings: Any, context: TaskContext) -> None:
        super().__init__()
        self.backbone = backbone
        self.settings = settings
        self.context = context

    def initialise(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Prepare state from every training image before the first step (default: nothing)."""

    def start_epoch(self, epoch: int) -> None:
        """React to the start of epoch ``epoch`` (counted from 0; default: nothing)."""

    @abstractmethod
    def loss(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise on this process's ``images`` (with their data-set ``indices``) and numbers to log."""

    def after_step(self) -> None:
        """Update state after the optimiser step (default: nothing)."""
