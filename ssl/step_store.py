"""The store of finished pretext steps, shared by every curriculum under one runs folder.

A step lives in ``<runs>/ssl-steps/<key>/`` (``key`` from
:meth:`ssl.config.StepConfig.key`, which covers the images, the task and its
settings, the schedule, the learning-rate choice, the seed and the key of the
step before it): ``config.json`` (the step's configuration and the command),
its checkpoints and ``tb/``, and once finished (the checkpoints removed)
``backbone.safetensors`` (the shared model-file format) and ``step.json`` (the chosen learning rate with
every trial's score, the mean loss of every epoch and, with a monitor, its k-NN balanced accuracy of the start
and after every epoch: ``knn_start``, ``epoch_knn``). A step is a cell of the
curricula's grid (:func:`step_cell`, :mod:`plumbing.grid`): a finished step
is reused as it is, an interrupted one resumes from its last checkpoint (its
learning-rate trials are not run again; :func:`train_step`) and a new one
trains: curricula with a common prefix train it once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from models.backbones import build_backbone
from models.initialisation import initialise
from models.model_file import BACKBONE_FILE, save_model, training_record
from plumbing.distributed import is_main_process, print_on_main
from plumbing.files import write_json_atomic
from plumbing.grid import Cell
from plumbing.lr_selection import resumed_choice
from plumbing.run_folders import open_run, read_results_file, record_config
from plumbing.runtime import Runtime
from plumbing.training import checkpoints

from .config import StepConfig
from .trainer import PretextData, choose_step_lr, fit_step

STEPS_DIR = "ssl-steps"
STEP_FILE = "step.json"
TRAINED_BY = "python -m ssl.curriculum"


def step_folder(runs_dir: Path, key: str) -> Path:
    """The folder of the step ``key`` under ``runs_dir``."""
    return runs_dir / STEPS_DIR / key


def finished_step(runs_dir: Path, key: str) -> dict[str, Any] | None:
    """The ``step.json`` record of a finished step, or ``None``; a damaged one is a :class:`UserError` naming it."""
    folder = step_folder(runs_dir, key)
    if not (folder / STEP_FILE).is_file() or not (folder / BACKBONE_FILE).is_file():
        return None
    return read_results_file(folder / STEP_FILE, lambda step: {"key", "task", "lr", "epoch_losses"} <= step.keys())


def start_weights(cfg: StepConfig, channels: int, runs_dir: Path) -> tuple[dict | None, dict[str, Any]]:
    """The weights a step starts from (``None``: the seeded random initialisation) and their provenance."""
    if cfg.start == "scratch":
        return None, {"init": "scratch"}
    backbone = build_backbone(cfg.backbone, channels)
    init = cfg.start
    if cfg.start.startswith("step:"):
        init = str(step_folder(runs_dir, cfg.start.removeprefix("step:")) / BACKBONE_FILE)
    provenance = initialise(backbone, init, runs_dir)
    return backbone.state_dict(), provenance


def step_cell(cfg: StepConfig, runs_dir: Path) -> Cell[StepConfig]:
    """The grid cell of a step: named by its key, finished by ``step.json`` and its backbone file, its settings
    the ``step`` record of ``config.json``, needing the step it starts from."""
    key = cfg.key()
    needs = (cfg.start.removeprefix("step:"),) if cfg.start.startswith("step:") else ()
    return Cell(name=key, folder=step_folder(runs_dir, key), section="step", settings=cfg.to_dict(), work=cfg,
                finished_files=(STEP_FILE, BACKBONE_FILE), needs=needs,
                hint="remove it and run again")


def train_step(cfg: StepConfig, data: PretextData, runtime: Runtime, command: str) -> None:
    """Train the step of ``cfg`` into its folder under ``runtime.runs_dir`` (module docstring), resuming it from
    its last checkpoint.

    The start weights (``data.start`` is replaced by them) are loaded only
    when the step trains, and their provenance goes into its backbone file.
    A finished step is reused as it is: its grid cell (:func:`step_cell`) is skipped.
    """
    runs_dir = runtime.runs_dir
    key = cfg.key()
    folder = step_folder(runs_dir, key)
    start, provenance = start_weights(cfg, data.channels, runs_dir)
    data = replace(data, start=start)
    run = open_run(runs_dir / STEPS_DIR, key, resume=bool(checkpoints(folder)))
    if run.checkpoint is not None:
        choice = resumed_choice(run.checkpoint["run"]["lr_choice"])
        print_on_main(f"{cfg.task}: resuming step {key} at lr {choice.lr:g}")
    else:
        choice = choose_step_lr(cfg, data, runtime)
    run.create()
    with run.discarded_on_failure():
        record = record_config(run, {"step": cfg.to_dict(), "key": key}, command)
        print_on_main(f"{cfg.task}: training {cfg.epochs} epoch(s) at lr {choice.lr:g} -> {folder}")
        trainer = fit_step(cfg, data, runtime, choice.lr, cfg.epochs, run_dir=run.path, record=record, lr_choice=choice,
                           checkpoint=run.checkpoint)
    result = {
        "key": key, "task": cfg.task, "start": cfg.start, "lr": trainer.state.lr_choice,
        "epoch_losses": trainer.state.epoch_losses, "images": len(data.images),
    } | trainer.state.monitored()
    if is_main_process():
        images = f"{', '.join(cfg.data)} ({len(data.images)} unlabelled images)"
        described = {"command": command} | record | {"init_provenance": provenance, "data_description": images}
        training = training_record(TRAINED_BY, described, step=cfg.to_dict(), key=key, lr=choice.lr,
                                   final_loss=trainer.state.epoch_losses[-1])
        save_model(folder / BACKBONE_FILE, trainer.backbone, image_size=cfg.image_size, training=training)
        write_json_atomic(folder / STEP_FILE, result)
        for path in checkpoints(folder):  # finished: the backbone file is what later steps read
            path.unlink(missing_ok=True)
    idist.barrier()
