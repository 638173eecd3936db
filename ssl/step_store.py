"""The store of finished pretext steps, shared by every curriculum under one runs folder.

A step lives in ``<runs>/ssl-steps/<key>/`` (``key`` from
:meth:`ssl.config.StepConfig.key`, which covers the images, the task and its
settings, the schedule, the learning-rate choice, the seed and the key of the
step before it): ``config.json`` (the step's configuration and the command),
its checkpoints and ``tb/``, and once finished (the checkpoints removed)
``backbone.safetensors`` (the shared model-file format) and ``step.json`` (the chosen learning rate with
every trial's score, the mean loss of every epoch). :func:`train_or_reuse`
returns a finished step as it is, resumes an interrupted one from its last
checkpoint (its learning-rate trials are not run again) and trains a new one:
curricula with a common prefix train it once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from models.backbones import build_backbone
from models.initialisation import initialise
from models.model_file import BACKBONE_FILE, save_model, training_record
from plumbing.distributed import is_main_process, print_on_main
from plumbing.errors import UserError
from plumbing.files import write_json_atomic
from plumbing.lr_selection import LrChoice
from plumbing.run_folders import CONFIG_FILE, open_run, record_config
from plumbing.training import checkpoints

from .config import StepConfig
from .trainer import StepContext, choose_step_lr, fit_step

STEPS_DIR = "ssl-steps"
STEP_FILE = "step.json"
TRAINED_BY = "python -m ssl.curriculum"


def step_folder(runs_dir: Path, key: str) -> Path:
    return runs_dir / STEPS_DIR / key


def finished_step(runs_dir: Path, key: str) -> dict[str, Any] | None:
    """The ``step.json`` record of a finished step, or ``None``."""
    folder = step_folder(runs_dir, key)
    if not (folder / STEP_FILE).is_file() or not (folder / BACKBONE_FILE).is_file():
        return None
    return json.loads((folder / STEP_FILE).read_text())


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


def _check_same(folder: Path, cfg: StepConfig) -> None:
    config = folder / CONFIG_FILE
    if config.is_file() and json.loads(config.read_text()).get("step") != cfg.to_dict():
        raise UserError(f"{folder} holds a step of other settings under the same key; remove it and run again")


def train_or_reuse(cfg: StepConfig, ctx: StepContext, runs_dir: Path, command: str) -> dict[str, Any]:
    """The finished step of ``cfg`` (module docstring): reused, resumed or trained; returns its ``step.json``.

    The start weights (``ctx.start`` is replaced by them) are loaded only
    when the step trains, and their provenance goes into its backbone file.
    """
    key = cfg.key()
    folder = step_folder(runs_dir, key)
    done = finished_step(runs_dir, key)
    if done is not None:
        _check_same(folder, cfg)
        print_on_main(f"{cfg.task}: reusing the finished step {key}")
        return done
    _check_same(folder, cfg)
    start, provenance = start_weights(cfg, ctx.channels, runs_dir)
    ctx = replace(ctx, start=start)
    run = open_run(runs_dir / STEPS_DIR, key, resume=bool(checkpoints(folder)))
    if run.checkpoint is not None:
        saved = run.checkpoint["run"]["lr_choice"]
        choice = LrChoice(float(saved["lr"]), (), saved["criterion"], False)
        print_on_main(f"{cfg.task}: resuming step {key} at lr {choice.lr:g}")
    else:
        choice = choose_step_lr(cfg, ctx)
    run.create()
    with run.discarded_on_failure(f"{cfg.task} step {key}: "):
        record = record_config(run, {"step": cfg.to_dict(), "key": key}, command)
        print_on_main(f"{cfg.task}: training {cfg.epochs} epoch(s) at lr {choice.lr:g} -> {folder}")
        trainer = fit_step(cfg, ctx, choice.lr, cfg.epochs, run_dir=run.path, record=record, lr_choice=choice,
                           checkpoint=run.checkpoint)
    result = {
        "key": key, "task": cfg.task, "start": cfg.start, "lr": trainer.state.lr_choice,
        "epoch_losses": trainer.state.epoch_losses, "images": len(ctx.images),
    }
    if is_main_process():
        images = f"{', '.join(cfg.data)} ({len(ctx.images)} unlabelled images)"
        described = {"command": command} | record | {"init_provenance": provenance, "data_description": images}
        training = training_record(TRAINED_BY, described, step=cfg.to_dict(), key=key, lr=choice.lr,
                                   final_loss=trainer.state.epoch_losses[-1])
        save_model(folder / BACKBONE_FILE, trainer.backbone, image_size=cfg.image_size, training=training)
        write_json_atomic(folder / STEP_FILE, result)
        for path in checkpoints(folder):  # finished: the backbone file is what later steps read
            path.unlink(missing_ok=True)
    idist.barrier()
    return result
