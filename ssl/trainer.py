"""One pretext step: the task on a backbone, SGD with a cosine schedule, an Ignite engine, and its LR choice.

:class:`PretextTrainer` holds a task (:mod:`ssl.tasks`, the backbone inside
it), SGD with momentum and weight decay and a per-iteration cosine decay of
the learning rate to 0, and :meth:`PretextTrainer.step`: the task's loss on
this process's share of a global batch under bf16 autocast on a GPU, the
gradients averaged over the processes, the optimiser step, then the task's
own update (:meth:`ssl.tasks.PretextTask.after_step`). The views of
iteration ``i`` on rank ``r`` come from a generator seeded by ``(seed, i,
r)``, so a resumed step draws what the uninterrupted one would have.

:func:`fit_step` trains for a number of epochs in an Ignite engine: the
shared handlers (NaN guard, checkpoints every epoch, progress bar,
TensorBoard) for the full step, a bare engine that stops at a non-finite
loss for an LR trial. Its score is the mean loss of its last epoch.
:func:`choose_step_lr` runs the trials of the grid and keeps the lowest
(:func:`plumbing.lr_selection.select_lr`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.utils.data import Dataset

from datasets.batches import checkpoint_position, evaluation_batches, steps_per_epoch, training_batches
from models.backbones import Backbone, build_backbone
from plumbing.distributed import average_gradients, mean_values_over_ranks, print_on_main, rank
from plumbing.lr_selection import LrChoice, Trial, select_lr
from plumbing.precision import bf16_autocast
from plumbing.seeding import derive_seed, generator
from plumbing.training import CheckpointedState, attach_training_handlers, attach_trial_handlers, restore

from .config import StepConfig
from .tasks import PretextTask, TaskContext, get_task, task_settings

CRITERION = "mean loss of the last epoch"


@dataclass
class StepState(CheckpointedState):
    """The checkpointed progress of a step: its record, iteration, LR choice and per-epoch mean losses."""

    config: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    lr_choice: dict[str, Any] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)


@dataclass
class StepContext:
    """What a step needs besides its configuration: the images, the start backbone's weights, the machine.

    ``start`` (``None``: the seeded random initialisation) is filled in by :func:`ssl.step_store.train_or_reuse`.
    """

    images: Dataset
    channels: int
    start: dict[str, torch.Tensor] | None
    device: torch.device
    amp: bool
    workers: int
    progress: bool


def build_task(cfg: StepConfig, ctx: StepContext) -> PretextTask:
    """The step's task on a backbone seeded by the step's seed and loaded with the start weights."""
    torch.manual_seed(derive_seed(cfg.seed, "pretext", cfg.task))
    backbone = build_backbone(cfg.backbone, ctx.channels)
    if ctx.start is not None:
        backbone.load_state_dict(ctx.start)
    context = TaskContext(cfg.image_size, len(ctx.images), cfg.batch_size, cfg.seed)
    return get_task(cfg.task).task(backbone, task_settings(cfg.task, cfg.settings), context)


class PretextTrainer:
    """A task, its optimiser and schedule, and one training step (module docstring)."""

    def __init__(self, task: PretextTask, cfg: StepConfig, lr: float, total_steps: int, device: torch.device,
                 amp: bool) -> None:
        self.cfg, self.device, self.amp = cfg, device, amp
        self.layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.task = task.to(device, memory_format=self.layout)
        self.parameters = [p for p in task.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.parameters, lr=lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
        self.state = StepState()

    @property
    def backbone(self) -> Backbone:
        return self.task.backbone

    def objects(self) -> dict[str, Any]:
        return {"task": self.task, "optimizer": self.optimizer, "schedule": self.schedule, "run": self.state}

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
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
        self.state.iteration += 1
        return mean_values_over_ranks(logs | {"lr": self.schedule.get_last_lr()[0]})


def _all_images(ctx: StepContext, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in evaluation_batches(ctx.images, batch_size, 0, ctx.device):
        yield batch["image"].to(ctx.device), torch.as_tensor(batch["index"]).to(ctx.device)


def fit_step(
    cfg: StepConfig, ctx: StepContext, lr: float, epochs: int, *, run_dir: Path | None = None,
    record: dict[str, Any] | None = None, lr_choice: LrChoice | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> PretextTrainer:
    """Train ``epochs`` at ``lr``: the full step into ``run_dir`` (resumed from ``checkpoint``) or a trial."""
    task = build_task(cfg, ctx)
    steps = steps_per_epoch(ctx.images, cfg.batch_size, ctx.workers)
    trainer = PretextTrainer(task, cfg, lr, steps * epochs, ctx.device, ctx.amp)
    if checkpoint is not None:
        restore(trainer.objects(), checkpoint)
    else:
        task.initialise(_all_images(ctx, cfg.batch_size))
        trainer.state.lr_choice = lr_choice.to_dict() if lr_choice is not None else {}
    trainer.state.config = dict(record or {})
    start = trainer.state.iteration
    batches: Iterable[dict[str, Any]] = training_batches(ctx.images, cfg.batch_size, cfg.seed, start, ctx.workers,
                                                         ctx.device)
    to_save = trainer.objects()
    checkpoint_position(batches, to_save, checkpoint)
    losses: list[float] = []

    def process(_: Engine, batch: dict[str, Any]) -> dict[str, float]:
        out = trainer.step(batch)
        losses.append(out["loss"])
        return out

    engine = Engine(process)

    @engine.on(Events.STARTED)
    def _resume_position(eng: Engine) -> None:
        eng.state.iteration, eng.state.epoch = start, start // steps

    @engine.on(Events.EPOCH_STARTED)
    def _epoch(eng: Engine) -> None:
        losses.clear()
        task.start_epoch(eng.state.epoch - 1)

    @engine.on(Events.ITERATION_COMPLETED(every=steps))
    def _epoch_loss(_: Engine) -> None:  # registered before the checkpoint of the same iteration
        trainer.state.epoch_losses.append(sum(losses) / len(losses) if losses else math.nan)

    if run_dir is not None:
        attach_training_handlers(engine, run_dir=run_dir, to_save=to_save, checkpoint_every=steps,
                                 progress=ctx.progress)
    else:
        attach_trial_handlers(engine, progress=ctx.progress, desc=f"{cfg.task} lr {lr:g}",
                              on_diverged=lambda: trainer.state.epoch_losses.append(math.inf))

    engine.run(batches, max_epochs=epochs, epoch_length=steps)
    return trainer


def choose_step_lr(cfg: StepConfig, ctx: StepContext) -> LrChoice:
    """The step's learning rate: ``cfg.lr``, or the grid's trial with the lowest last-epoch mean loss."""
    if cfg.lr is not None:
        return LrChoice(cfg.lr, (), "given", False)

    def trial(lr: float) -> float:
        losses = fit_step(cfg, ctx, lr, cfg.lr_trial_epochs).state.epoch_losses
        return losses[-1] if losses else math.inf

    def report(done: Trial) -> None:
        print_on_main(f"{cfg.task} lr {done.lr:g}: {CRITERION} {done.score:.4f} after {cfg.lr_trial_epochs} epoch(s)")

    return select_lr(cfg.lr_grid, trial, criterion=CRITERION, maximise=False, on_trial=report)
