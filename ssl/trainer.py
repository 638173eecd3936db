"""One pretext step: the task on a backbone, SGD with a cosine schedule, its steps and its LR choice.

:class:`PretextTrainer` holds a task (:mod:`ssl.tasks`, the backbone inside
it), SGD with momentum and weight decay and a per-iteration cosine decay of
the learning rate to 0, and :meth:`PretextTrainer.step`: the task's loss on
this process's share of a global batch under bf16 autocast on a GPU, the
gradients averaged over the processes, the optimiser step, then the task's
own update (:meth:`ssl.tasks.PretextTask.after_step`). The views of
iteration ``i`` on rank ``r`` come from a generator seeded by ``(seed, i,
r)``, so a resumed step draws what the uninterrupted one would have.

:func:`fit_step` trains for a number of epochs with the shared skeleton
(:class:`plumbing.engine.StepRunner`): the shared handlers (NaN guard,
checkpoints every epoch, progress bar, TensorBoard) for the full step, a
bare engine that stops at a non-finite loss for an LR trial. With a
monitor (:mod:`ssl.monitor`) it scores the start's k-NN balanced accuracy
before training and the backbone's after every epoch. A trial's score is
the monitor's last value (highest kept) or, without a monitor, the mean loss
of its last epoch (lowest kept); :func:`choose_step_lr` runs the trials of
the grid (:func:`plumbing.lr_selection.choose_lr`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datasets.batches import checkpoint_position, evaluation_batches, steps_per_epoch, training_batches
from models.backbones import Backbone, build_backbone
from plumbing.distributed import average_gradients, mean_values_over_ranks, print_on_main, rank
from plumbing.engine import StepRunner
from plumbing.lr_schedules import cosine_decay
from plumbing.lr_selection import LrChoice, choose_lr
from plumbing.precision import bf16_autocast, memory_layout
from plumbing.runtime import Runtime
from plumbing.seeding import derive_seed, generator
from plumbing.training import Progress, restore

from .config import StepConfig
from .monitor import Monitor
from .tasks import PretextTask, TaskContext, get_task, task_settings

CRITERION = "mean loss of the last epoch"
MONITOR_CRITERION = "monitor k-NN balanced accuracy after the last epoch"


@dataclass
class StepState(Progress):
    """The checkpointed progress of a step: its record, iteration, LR choice and per-epoch mean losses."""

    lr_choice: dict[str, Any] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)
    knn_start: float | None = None
    """The monitor's k-NN balanced accuracy of the start (``None`` without a monitor)."""
    epoch_knn: list[float] = field(default_factory=list)
    """The monitor's k-NN balanced accuracy after every epoch."""

    def monitored(self) -> dict[str, Any]:
        """The monitor's values for ``step.json`` (nothing without a monitor)."""
        return {} if self.knn_start is None else {"knn_start": self.knn_start, "epoch_knn": self.epoch_knn}


@dataclass(frozen=True)
class PretextData:
    """What a step trains on besides its configuration: the unlabelled images, the start backbone's weights and
    the monitor (``None``: none; built once for every step of a command, as the step's ``monitor`` says).

    ``start`` (``None``: the seeded random initialisation) is filled in by :func:`ssl.step_store.train_step`.
    """

    images: Dataset
    channels: int
    start: dict[str, torch.Tensor] | None = None
    monitor: Monitor | None = None


def build_task(cfg: StepConfig, data: PretextData, total_steps: int) -> PretextTask:
    """The step's task on a backbone seeded by the step's seed and loaded with the start weights, for a run of
    ``total_steps`` optimiser steps."""
    torch.manual_seed(derive_seed(cfg.seed, "pretext", cfg.task))
    backbone = build_backbone(cfg.backbone, data.channels)
    if data.start is not None:
        backbone.load_state_dict(data.start)
    context = TaskContext(cfg.image_size, len(data.images), cfg.batch_size, cfg.seed, total_steps)
    return get_task(cfg.task).task(backbone, task_settings(cfg.task, cfg.settings), context)


class PretextTrainer:
    """A task, its optimiser and schedule, and one training step (module docstring)."""

    def __init__(self, task: PretextTask, cfg: StepConfig, lr: float, total_steps: int, device: torch.device,
                 amp: bool) -> None:
        self.cfg, self.device, self.amp = cfg, device, amp
        self.layout = memory_layout(device)
        self.task = task.to(device, memory_format=self.layout)
        self.parameters = [p for p in task.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.parameters, lr=lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.schedule = cosine_decay(self.optimizer, total_steps)
        self.state = StepState()
        self.epoch_losses: list[float] = []
        """The losses of the current epoch so far (their mean becomes ``state.epoch_losses``' entry)."""

    @property
    def backbone(self) -> Backbone:
        return self.task.backbone

    def objects(self) -> dict[str, Any]:
        return {"task": self.task, "optimizer": self.optimizer, "schedule": self.schedule, "run": self.state}

    def start_epoch(self, epoch: int) -> None:
        """A new epoch (counted from 0): its losses start empty and the task reacts (SwAV's frozen prototypes)."""
        self.epoch_losses.clear()
        self.task.start_epoch(epoch)

    def end_epoch(self) -> None:
        """Record the mean loss of the epoch that just ended (NaN when it had no step)."""
        losses = self.epoch_losses
        self.state.epoch_losses.append(sum(losses) / len(losses) if losses else math.nan)

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One SGD step of the task's loss (module docstring); the views are seeded by ``state.iteration``."""
        self.task.train()
        images = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        indices = torch.as_tensor(batch["index"]).to(self.device, non_blocking=True)
        views = generator(self.cfg.seed, "views", self.state.iteration, rank())
        with bf16_autocast(self.device, self.amp):
            loss, logs = self.task.loss(images, indices, views)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.parameters)
        self.optimizer.step()
        self.schedule.step()
        self.task.after_step()
        out = mean_values_over_ranks(logs | {"lr": self.schedule.get_last_lr()[0]})
        self.epoch_losses.append(out["loss"])
        if self.state.knn_start is not None:  # the latest monitor value: progress bar and TensorBoard
            out["monitor_knn"] = self.state.epoch_knn[-1] if self.state.epoch_knn else self.state.knn_start
        return out


def _all_images(
    data: PretextData, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in evaluation_batches(data.images, batch_size, 0, device):
        yield batch["image"].to(device), torch.as_tensor(batch["index"]).to(device)


def fit_step(
    cfg: StepConfig, data: PretextData, runtime: Runtime, lr: float, epochs: int, *, run_dir: Path | None = None,
    record: dict[str, Any] | None = None, lr_choice: LrChoice | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> PretextTrainer:
    """Train ``epochs`` at ``lr``: the full step into ``run_dir`` (resumed from ``checkpoint``) or a trial."""
    steps = steps_per_epoch(data.images, cfg.batch_size, runtime.workers)
    task = build_task(cfg, data, steps * epochs)
    trainer = PretextTrainer(task, cfg, lr, steps * epochs, runtime.device, runtime.bf16)
    monitor = data.monitor
    if checkpoint is not None:
        restore(trainer.objects(), checkpoint)
    else:
        if monitor is not None:
            trainer.state.knn_start = monitor.start_knn(cfg.key(), trainer.backbone, runtime, cfg.batch_size)
            if run_dir is not None:
                print_on_main(f"{cfg.task}: monitor k-NN balanced accuracy of the start {trainer.state.knn_start:.4f}")
        task.initialise(_all_images(data, cfg.batch_size, runtime.device))
        trainer.state.lr_choice = lr_choice.to_dict() if lr_choice is not None else {}
    trainer.state.config = dict(record or {})
    batches: Iterable[dict[str, Any]] = training_batches(data.images, cfg.batch_size, cfg.seed,
                                                         trainer.state.iteration, runtime.workers, runtime.device)
    to_save = trainer.objects()
    checkpoint_position(batches, to_save, checkpoint)
    runner = StepRunner(trainer.step, trainer.state, total=steps * epochs, epoch_length=steps)
    runner.at_epoch_start(trainer.start_epoch)

    def end_epoch(_: int) -> None:  # before the checkpoint of the same iteration
        trainer.end_epoch()
        if monitor is None:
            return
        trainer.state.epoch_knn.append(monitor.knn(trainer.backbone, runtime, cfg.batch_size))
        if run_dir is not None:
            print_on_main(f"{cfg.task} epoch {len(trainer.state.epoch_knn)}/{epochs}: mean loss "
                          f"{trainer.state.epoch_losses[-1]:.4f}, monitor k-NN {trainer.state.epoch_knn[-1]:.4f}")

    runner.every(steps, end_epoch)
    if run_dir is not None:
        runner.train(batches, run_dir=run_dir, to_save=to_save, checkpoint_every=steps, progress=runtime.progress)
    else:
        runner.trial(batches, progress=runtime.progress, desc=f"{cfg.task} lr {lr:g}",
                     on_diverged=lambda: trainer.state.epoch_losses.append(math.inf))
    return trainer


def choose_step_lr(cfg: StepConfig, data: PretextData, runtime: Runtime) -> LrChoice:
    """The step's learning rate: ``cfg.lr``, or the grid's trial whose backbone the monitor scores highest after
    its last epoch, or without a monitor the trial with the lowest last-epoch mean loss (a diverged trial is the
    worst either way)."""
    monitored = data.monitor is not None

    def trial(lr: float) -> float:
        state = fit_step(cfg, data, runtime, lr, cfg.lr_trial_epochs).state
        if not state.epoch_losses or not math.isfinite(state.epoch_losses[-1]):
            return -math.inf if monitored else math.inf
        return state.epoch_knn[-1] if monitored else state.epoch_losses[-1]

    return choose_lr(cfg.lr, cfg.lr_grid, trial, criterion=MONITOR_CRITERION if monitored else CRITERION,
                     maximise=monitored, trial_epochs=cfg.lr_trial_epochs, label=f"{cfg.task} ")
