"""Training and scoring a classifier: the downstream protocol (its command is ``python -m evaluate.finetune``).

:class:`FinetuneConfig` is what a run records. :func:`run_protocol` does, in
one process or under ``torchrun`` (:mod:`plumbing.distributed`):

1. **learning-rate selection** (:func:`plumbing.lr_selection.select_lr`):
   each rate of ``lr_grid`` trains ``lr_trial_epochs`` from the same
   initialisation; its score is the best validation balanced accuracy of its
   epochs; the highest wins (skipped when ``lr`` is given);
2. **the full run** with that rate for ``epochs`` (:func:`train_classifier`,
   the steps run by :class:`plumbing.engine.StepRunner`): AdamW, cosine decay
   per iteration (:func:`plumbing.lr_schedules.cosine_decay`), class-balanced cross-entropy
   (:mod:`evaluate.protocol.losses`) unless ``balance`` is ``none``; after every epoch
   the validation set is scored and the best epoch so far is written as
   ``best.pt`` (weights) and ``classifier.safetensors`` (the exported
   classifier, :mod:`models.model_file`); checkpoints every epoch through
   the shared handlers (NaN guard, progress bar, TensorBoard), so
   ``--resume`` continues after the last finished epoch;
3. **scoring** the best epoch's weights on the evaluation set
   (:func:`score`, the metrics of :mod:`evaluate.metrics`) into ``results.json``.

``mode`` ``finetune`` trains every weight; ``linear`` freezes the backbone
(batch-norm statistics included: it stays in eval mode) and trains the head
alone - a linear probe. Under several processes the model is wrapped in DDP
(batch norm synchronised on GPUs); without augmentation (its random
state is per process and restarts on resume) a linear probe then equals the
single-process run up to float rounding, a fine-tune differs by the
per-rank batch-norm statistics on CPUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from torch import nn

from datasets.batches import checkpoint_position, evaluation_batches, steps_per_epoch, training_batches
from evaluate.metrics import classification_metrics, metrics_report
from evaluate.plots import write_confusion
from evaluate.protocol.losses import class_weights, weighted_cross_entropy
from evaluate.protocol.task_data import DataChoice, TaskData
from models.backbones import Classifier, build_backbone
from models.initialisation import initialise
from models.model_file import CLASSIFIER_FILE, save_model, training_record
from plumbing.config import dataclass_from_dict
from plumbing.distributed import data_parallel, is_main_process, mean_values_over_ranks, print_on_main
from plumbing.engine import StepRunner
from plumbing.files import atomic_path, write_json_atomic
from plumbing.lr_schedules import cosine_decay
from plumbing.lr_selection import LrChoice, choose_lr, resumed_choice
from plumbing.precision import bf16_autocast, memory_layout
from plumbing.run_folders import RESULTS_FILE, RunFolder
from plumbing.runtime import Runtime
from plumbing.seeding import derive_seed
from plumbing.training import Progress, restore

MODES = ("finetune", "linear")
BALANCE = ("loss", "none")
CRITERION = "validation balanced accuracy"
BEST_FILE = "best.pt"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a downstream run (recorded in ``config.json`` and the checkpoints)."""

    data: str = "phantom"
    data_root: str | None = None
    version: int | None = 3
    setting: str | None = "0s"
    length: int | None = None
    eval_data: str | None = None
    eval_root: str | None = None
    eval_length: int | None = None
    backbone: str = "resnet18"
    init: str = "scratch"
    mode: str = "finetune"
    image_size: int = 64
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None
    lr_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    lr_trial_epochs: int = 1
    weight_decay: float = 1e-4
    balance: str = "loss"
    augment: bool = False
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"lr_grid": list(self.lr_grid)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        cfg = dataclass_from_dict(cls, data, "finetune configuration", complete=True)
        return cls(**{**asdict(cfg), "lr_grid": tuple(cfg.lr_grid)})

    def data_choices(self) -> tuple[DataChoice, DataChoice]:
        """The training and the evaluation images (for the same data set the evaluation root defaults to its root)."""
        train = DataChoice(self.data, self.data_root, self.version, self.setting, self.length, self.augment)
        same = self.eval_data in (None, self.data)
        eval_root = self.data_root if same and self.eval_root is None else self.eval_root
        evaluation = DataChoice(self.eval_data or self.data, eval_root, self.version, self.setting, self.eval_length)
        return train, evaluation


@dataclass
class RunState(Progress):
    """The checkpointed progress of the full run: the record and position, the chosen rate and the best epoch."""

    lr_choice: dict[str, Any] = field(default_factory=dict)
    best_score: float = -math.inf
    best_epoch: int = 0


def build_classifier(cfg: FinetuneConfig, channels: int, num_classes: int, runs_dir: Path) -> tuple[Classifier, dict]:
    """A classifier initialised by ``cfg.init`` (seeded by ``cfg.seed``), and the initialisation's provenance."""
    torch.manual_seed(derive_seed(cfg.seed, "classifier"))
    backbone = build_backbone(cfg.backbone, channels)
    provenance = initialise(backbone, cfg.init, runs_dir)
    return Classifier(backbone, num_classes), provenance


class ClassifierTrainer:
    """A classifier, its optimiser and schedule, and one training step on a batch."""

    def __init__(
        self, model: Classifier, cfg: FinetuneConfig, lr: float, total_steps: int, weights: torch.Tensor | None,
        device: torch.device, amp: bool,
    ) -> None:
        self.cfg, self.device, self.amp, self.weights = cfg, device, amp, weights
        self.linear = cfg.mode == "linear"
        if self.linear:
            model.backbone.requires_grad_(False)
        self.layout = memory_layout(device)
        self.model = model.to(device, memory_format=self.layout)
        self.net = data_parallel(self.model, device, sync_bn=device.type == "cuda" and not self.linear)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        self.schedule = cosine_decay(self.optimizer, total_steps)
        self.state = RunState()

    def objects(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "schedule": self.schedule, "run": self.state}

    def train_mode(self) -> None:
        self.net.train()
        if self.linear:
            self.model.backbone.eval()  # frozen batch-norm statistics

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One AdamW step on the class-balanced cross-entropy of ``batch`` (this rank's part of a global batch)."""
        self.train_mode()
        images = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        labels = torch.as_tensor(batch["label"]).to(self.device, non_blocking=True)
        with bf16_autocast(self.device, self.amp):
            logits = self.net(images)
        loss = weighted_cross_entropy(logits, labels, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return mean_values_over_ranks({"loss": float(loss.detach()), "lr": self.schedule.get_last_lr()[0]})


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device, amp: bool,
            num_classes: int, extra: Mapping[str, Metric] | None = None) -> Engine:
    """Run ``model`` over ``batches`` in an Ignite evaluator with the classification metrics (and ``extra``)."""

    def process(_: Engine, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_layout(device))
        with bf16_autocast(device, amp):
            logits = model(images)
        return logits.float(), torch.as_tensor(batch["label"]).to(device)

    evaluator = Engine(process)
    for name, metric in (classification_metrics(num_classes, device=device) | dict(extra or {})).items():
        metric.attach(evaluator, name)
    evaluator.run(batches)
    return evaluator


def score(model: nn.Module, dataset: Any, classes: tuple[str, ...], *, batch_size: int, workers: int,
          device: torch.device, amp: bool) -> dict[str, Any]:
    """The metrics report (:func:`evaluate.metrics.metrics_report`) of ``model`` on ``dataset`` (on every rank)."""
    evaluator = predict(model, evaluation_batches(dataset, batch_size, workers, device), device, amp, len(classes))
    return metrics_report(evaluator.state.metrics, classes)


def train_classifier(
    cfg: FinetuneConfig, data: TaskData, runtime: Runtime, lr: float, epochs: int, *, run_dir: Path | None = None,
    record: dict[str, Any] | None = None, lr_choice: LrChoice | None = None,
    checkpoint: dict[str, Any] | None = None, on_best: Callable[[ClassifierTrainer], None] | None = None,
) -> ClassifierTrainer:
    """Train for ``epochs`` at ``lr``, scoring the validation set after each epoch.

    With ``run_dir`` (the full run) the shared handlers checkpoint every epoch
    (with ``record``, the run's configuration and command, and ``lr_choice``)
    and ``on_best`` runs on rank 0 when an epoch improves the validation
    score; without it (a trial) a diverging loss ends the trial with a score
    of -inf. ``checkpoint`` resumes the full run.
    """
    model, provenance = build_classifier(cfg, data.channels, len(data.classes), runtime.runs_dir)
    weights = class_weights(data.train_labels, len(data.classes)) if cfg.balance == "loss" else None
    steps = steps_per_epoch(data.train, cfg.batch_size, runtime.workers)
    trainer = ClassifierTrainer(model, cfg, lr, steps * epochs, weights, runtime.device, runtime.bf16)
    trainer.state.lr_choice = lr_choice.to_dict() if lr_choice is not None else {}
    if checkpoint is not None:
        restore(trainer.objects(), checkpoint)
        provenance = trainer.state.config["init_provenance"]  # the run's, not this process's re-initialisation
    trainer.state.config = dict(record or {}) | {"init_provenance": provenance}  # with this resume's command
    batches = training_batches(data.train, cfg.batch_size, cfg.seed, trainer.state.iteration, runtime.workers,
                               runtime.device)
    to_save = trainer.objects()
    checkpoint_position(batches, to_save, checkpoint)
    runner = StepRunner(trainer.step, trainer.state, total=steps * epochs, epoch_length=steps)

    def validate(iteration: int) -> None:  # before the checkpoint of the same iteration
        report = score(trainer.model, data.validation, data.classes, batch_size=cfg.batch_size, workers=0,
                       device=runtime.device, amp=runtime.bf16)
        value = report["balanced_accuracy"]
        if value > trainer.state.best_score:
            trainer.state.best_score, trainer.state.best_epoch = value, iteration // steps
            if on_best is not None and is_main_process():
                on_best(trainer)

    runner.every(steps, validate)
    if run_dir is not None:
        runner.train(batches, run_dir=run_dir, to_save=to_save, checkpoint_every=steps, progress=runtime.progress)
        return trainer

    def diverged() -> None:
        trainer.state.best_score = -math.inf

    runner.trial(batches, progress=runtime.progress, desc=f"lr {lr:g}", on_diverged=diverged)
    return trainer


def save_best(trainer: ClassifierTrainer, run_dir: Path, cfg: FinetuneConfig, classes: tuple[str, ...]) -> None:
    """``best.pt`` (the weights) and ``classifier.safetensors`` of the epoch that just improved (rank 0)."""
    with atomic_path(run_dir / BEST_FILE) as tmp:
        torch.save({"model": trainer.model.state_dict(), "epoch": trainer.state.best_epoch,
                    "score": trainer.state.best_score}, tmp)
    training = training_record("python -m evaluate.finetune", trainer.state.config, mode=cfg.mode,
                               epoch=trainer.state.best_epoch, validation_balanced_accuracy=trainer.state.best_score)
    save_model(run_dir / CLASSIFIER_FILE, trainer.model.backbone, image_size=cfg.image_size, training=training,
               head=trainer.model.head, classes=classes)


def choose_classifier_lr(cfg: FinetuneConfig, data: TaskData, runtime: Runtime) -> LrChoice:
    """The learning rate of the full run: ``cfg.lr``, or the best of the grid's trials (each reported on rank 0)."""

    def trial(lr: float) -> float:
        return train_classifier(cfg, data, runtime, lr, cfg.lr_trial_epochs).state.best_score

    return choose_lr(cfg.lr, cfg.lr_grid, trial, criterion=CRITERION, maximise=True,
                     trial_epochs=cfg.lr_trial_epochs)


def write_results(run_dir: Path, report: dict[str, Any], trainer: ClassifierTrainer, data: TaskData) -> dict:
    """``results.json``: the evaluation metrics, the chosen rate with every trial, the best epoch and set sizes; and
    ``confusion.png``, the evaluation's confusion matrix (:func:`evaluate.plots.write_confusion`)."""
    results = report | {
        "classes": list(data.classes),
        "lr": trainer.state.lr_choice,
        "best_epoch": trainer.state.best_epoch,
        "validation_balanced_accuracy": trainer.state.best_score,
        "images": data.sizes(),
    }
    if is_main_process():
        write_json_atomic(run_dir / RESULTS_FILE, results)
        write_confusion(run_dir, results["confusion_matrix"], results["classes"], f"{run_dir.name}: best epoch")
    return results


def run_protocol(
    cfg: FinetuneConfig, data: TaskData, runtime: Runtime, run: RunFolder, record: dict[str, Any]
) -> dict[str, Any]:
    """Choose the rate, train the full run into ``run`` (or resume it) and score its best epoch (module docstring)."""
    if run.checkpoint is not None:
        choice = resumed_choice(run.checkpoint["run"]["lr_choice"], maximise=True)
    else:
        choice = choose_classifier_lr(cfg, data, runtime)
    done = run.checkpoint is not None and run.checkpoint["run"]["iteration"] >= cfg.epochs * steps_per_epoch(
        data.train, cfg.batch_size, runtime.workers)
    print_on_main(f"{run.path}: finished; scoring its best epoch again" if done else
                  f"training {cfg.epochs} epoch(s) at lr {choice.lr:g} -> {run.path}")
    trainer = train_classifier(
        cfg, data, runtime, choice.lr, cfg.epochs, run_dir=run.path, record=record, lr_choice=choice,
        checkpoint=run.checkpoint, on_best=lambda t: save_best(t, run.path, cfg, data.classes),
    )
    idist.barrier()  # rank 0 has written best.pt
    best = torch.load(run.path / BEST_FILE, map_location=runtime.device, weights_only=True)
    trainer.model.load_state_dict(best["model"])
    report = score(trainer.model, data.evaluation, data.classes, batch_size=cfg.batch_size,
                   workers=runtime.workers, device=runtime.device, amp=runtime.bf16)
    return write_results(run.path, report, trainer, data)
