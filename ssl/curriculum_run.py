"""A curriculum run: its steps (trained or reused), its final backbone, the downstream protocol and AIL.

A run folder ``<runs>/<prefix>-<downstream>-<ordering>-seed<s>/`` holds
``config.json`` (the :class:`ssl.config.CurriculumConfig` and every command
that ran it), ``backbone.safetensors`` (the backbone the downstream training
starts from: the last step's, or the scratch / ImageNet initialisation of a
baseline; ``adapt.train --init ssl:RUN`` reads it), ``downstream/`` (an
``evaluate.finetune`` run folder: its checkpoints, the chosen learning rate
with every trial, ``classifier.safetensors``, ``results.json``,
``confusion.png`` and, where the evaluation images have lung masks,
``attention.json`` / ``attention.png``) and, once finished, ``pretext.png``
(a run with steps: loss and monitor per epoch) and ``results.json``: the ordering, every step's key,
learning rate and losses with the k-NN and linear probes of its backbone
(:mod:`evaluate.protocol.probes`, on the downstream task), and the
downstream figures: the fine-tune's, AIL, and under ``knn`` / ``linear`` the
probes of the run's backbone (the last step's, or the baseline's start). The runs and their
steps are the cells of one grid (:func:`curriculum_cells`,
:mod:`plumbing.grid`): running the same command again skips a finished run
and continues an interrupted one: finished steps are reused, an interrupted
step or downstream training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch

from datasets.synthetic import SyntheticDataset
from evaluate.ail.lung_masks import MaskSource
from evaluate.ail.measurement import measure_attention, write_attention
from evaluate.metrics import MISSING, missing_classes_note, missing_classes_warning
from evaluate.plots import PRETEXT_CURVES, pretext_curves, save
from evaluate.protocol.probes import probe_backbone
from evaluate.protocol.task_data import TaskData, task_data
from evaluate.protocol.training import run_protocol
from models.backbones import build_backbone
from models.initialisation import initialise
from models.model_file import (
    BACKBONE_FILE,
    CLASSIFIER_FILE,
    load_backbone_weights,
    load_classifier,
    save_model,
    training_record,
)
from plumbing.distributed import is_main_process, print_on_main
from plumbing.errors import UserError
from plumbing.files import write_json_atomic
from plumbing.grid import Cell, Status, cell_status
from plumbing.precision import memory_layout
from plumbing.run_folders import CONFIG_FILE, RESULTS_FILE, RunFolder, open_run, read_results_file, record_config
from plumbing.runtime import Runtime
from plumbing.seeding import derive_seed
from plumbing.training import checkpoints
from ssl.step_store import TRAINED_BY, finished_step, step_cell, step_folder, train_step

from .config import CurriculumConfig, StepConfig
from .monitor import Monitor
from .tasks import settings_record
from .trainer import PretextData

DOWNSTREAM_DIR = "downstream"
AIL_IMAGES = 256
"""Evaluation images whose class activation maps give the run's AIL."""


def downstream_label(cfg: CurriculumConfig) -> str:
    """The downstream task of a run as the runs table shows it."""
    d = cfg.downstream
    return d.data if d.version is None else f"{d.data}-v{d.version}-{d.setting}"


def run_name(cfg: CurriculumConfig, prefix: str) -> str:
    """The run folder's name: ``<prefix>-<downstream>-<ordering>-seed<s>`` (module docstring)."""
    ordering = "-".join(cfg.tasks) + ("-imagenet" if cfg.init == "imagenet" else "") if cfg.tasks else cfg.label()
    return f"{prefix}-{downstream_label(cfg)}-{ordering}-seed{cfg.seed}"


def step_configs(cfg: CurriculumConfig, bf16: bool, store_workers: int | None) -> list[StepConfig]:
    """The steps of the curriculum in order, each starting from the key of the one before it, run with
    ``bf16`` or not by this many processes (``store_workers``: the loader's workers when a store is read in blocks)."""
    steps: list[StepConfig] = []
    start = cfg.init
    for task in cfg.tasks:
        step = StepConfig(
            task=task, settings=settings_record(task, cfg.overrides.get(task, {})), data=cfg.data,
            max_images=cfg.max_images,
            backbone=cfg.backbone, image_size=cfg.image_size, epochs=cfg.epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, lr_grid=cfg.lr_grid, lr_trial_epochs=cfg.lr_trial_epochs, weight_decay=cfg.weight_decay,
            momentum=cfg.momentum, seed=cfg.seed, start=start, bf16=bf16, processes=idist.get_world_size(),
            store_workers=store_workers, monitor=cfg.monitor,
        )
        steps.append(step)
        start = f"step:{step.key()}"
    return steps


RECORDED = ("ordering", "tasks", "init", "seed", "settings", "downstream_task", "backbone", "image_size", "downstream")
"""The keys of a finished run's ``results.json`` that the runs table and the plan read."""


def complete_results(results: dict[str, Any]) -> bool:
    """Whether ``results`` holds what a finished run records (:data:`RECORDED`, the downstream balanced accuracy
    and AIL, the downstream settings)."""
    downstream, settings = results.get("downstream"), results.get("settings")
    return (all(k in results for k in RECORDED) and isinstance(downstream, dict)
            and {"balanced_accuracy", "ail"} <= downstream.keys() and isinstance(settings, dict)
            and isinstance(settings.get("downstream"), dict))


def read_results(folder: Path) -> dict[str, Any] | None:
    """The finished run's ``results.json`` in ``folder``, ``None`` when there is none; a damaged one is a
    :class:`UserError` naming it (:func:`plumbing.run_folders.read_results_file`)."""
    path = folder / RESULTS_FILE
    return read_results_file(path, complete_results) if path.is_file() else None


def _export_start(cfg: CurriculumConfig, channels: int, folder: Path, runs_dir: Path, steps: list[dict],
                  command: str) -> None:
    """``backbone.safetensors`` of the run: the last step's, or the baseline's initialisation (rank 0)."""
    if not is_main_process():
        return
    if steps:
        shutil.copyfile(step_folder(runs_dir, steps[-1]["key"]) / BACKBONE_FILE, folder / BACKBONE_FILE)
        return
    torch.manual_seed(derive_seed(cfg.seed, "pretext", "none"))
    backbone = build_backbone(cfg.backbone, channels)
    provenance = initialise(backbone, cfg.init, runs_dir)
    record = {"command": command, "init_provenance": provenance, "data_description": "none (no pretext step)"}
    save_model(folder / BACKBONE_FILE, backbone, image_size=cfg.image_size,
               training=training_record(TRAINED_BY, record, baseline=cfg.init))


def _attention(folder: Path, data: Any, dataset_name: str, runtime: Runtime) -> float | None:
    """Mean AIL of the downstream classifier on the evaluation images, when they have lung masks (rank 0)."""
    if "mask" not in data.evaluation[0]:
        return None
    model, info = load_classifier(folder / CLASSIFIER_FILE, runtime.device)
    masks = MaskSource(data.evaluation, dataset_name, None, info.image_size)
    result = measure_attention(model, data.evaluation, masks, method="gradcam", class_of="predicted",
                               max_images=AIL_IMAGES, batch_size=64, keep=16, device=runtime.device,
                               progress=runtime.progress)
    about = {"method": "gradcam", "class_of": "predicted", "layer": model.cam_layer,
             "data": f"{dataset_name} evaluation images", "classifier": str(folder / CLASSIFIER_FILE)}
    return float(write_attention(folder, result, tuple(info.classes or ()), about)["ail"]["mean"])


def _probe_data(cfg: CurriculumConfig) -> TaskData:
    """The downstream task's images for the probes: as the fine-tune's, the training images unaugmented."""
    d = cfg.downstream
    train, evaluation = d.data_choices()
    return task_data(replace(train, augment=False), evaluation, d.image_size, d.seed)


def probe_file(path: Path, cfg: CurriculumConfig, data: TaskData, channels: int, runtime: Runtime,
               cache: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The k-NN and linear probes (:mod:`evaluate.protocol.probes`) of the backbone file ``path`` on ``data``;
    ``cache`` keeps them by file and downstream task, so a step two runs share is probed once per command."""
    task = {k: v for k, v in cfg.downstream.to_dict().items() if k != "init"}  # init: the run's own file
    key = json.dumps({"file": str(path), "downstream": task}, sort_keys=True)
    if cache is not None and key in cache:
        return cache[key]
    backbone = build_backbone(cfg.backbone, channels)
    load_backbone_weights(backbone, path)
    backbone.to(runtime.device, memory_format=memory_layout(runtime.device))
    probes = probe_backbone(backbone, data, seed=cfg.downstream.seed, batch_size=cfg.downstream.batch_size,
                            workers=runtime.workers, device=runtime.device, amp=runtime.bf16)
    if cache is not None:
        cache[key] = probes
    return probes


def _downstream(cfg: CurriculumConfig, folder: Path, runtime: Runtime, command: str) -> dict[str, Any]:
    d = cfg.downstream
    data = task_data(*d.data_choices(), d.image_size, d.seed)
    target = folder / DOWNSTREAM_DIR
    run: RunFolder = open_run(folder, DOWNSTREAM_DIR, resume=bool(checkpoints(target)))
    run.create()
    with run.discarded_on_failure("downstream: "):
        record = record_config(run, {"finetune": d.to_dict(), "data_description": f"{d.data} train split"}, command)
        results = run_protocol(d, data, runtime, run, record)
    ail = _attention(target, data, d.eval_data or d.data, runtime) if is_main_process() else None
    if (warning := missing_classes_warning(results, "downstream evaluation set")) is not None:
        print_on_main(warning)
    kept = ("balanced_accuracy", "auroc", "recall", "lr", "classes", MISSING)
    return {k: results[k] for k in kept if k in results} | {"ail": ail}


def curriculum_cells(
    configs: Sequence[tuple[str, CurriculumConfig]], images: Any, runtime: Runtime
) -> list[Cell[CurriculumConfig | StepConfig]]:
    """The grid of the runs ``configs`` (name, configuration) on ``images``, in their order: each run that is
    not finished after the cells of its steps (:func:`ssl.step_store.step_cell`; a step two runs share is one
    cell, listed before the first of them), each step needing the one before it and each run its steps."""
    store_workers = runtime.workers if isinstance(images, SyntheticDataset) else None
    cells: list[Cell[CurriculumConfig | StepConfig]] = []
    listed: set[str] = set()
    for name, cfg in configs:
        run: Cell[CurriculumConfig | StepConfig] = Cell(
            name=name, folder=runtime.runs_dir / name, section="curriculum", settings=cfg.to_dict(), work=cfg,
            finished_files=(RESULTS_FILE,), hint="choose another --prefix or remove the folder")
        if cell_status(run) != "finished":
            steps = [step_cell(s, runtime.runs_dir) for s in step_configs(cfg, runtime.bf16, store_workers)]
            cells += [s for s in steps if s.name not in listed]
            listed.update(s.name for s in steps)
            run = replace(run, needs=tuple(s.name for s in steps))
        cells.append(run)
    return cells


@dataclass
class CurriculumRunner:
    """Runs the cells of :func:`curriculum_cells` here: a step trains on ``images`` (watched by ``monitor``, built
    from the steps' ``monitor`` record); a run, its steps finished, exports its backbone and trains the
    downstream protocol."""

    images: Any
    channels: int
    runtime: Runtime
    command: str
    monitor: Monitor | None = None
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The probes of the backbone files probed so far (:func:`probe_file`'s cache)."""

    def __call__(self, cell: Cell[CurriculumConfig | StepConfig], status: Status) -> None:
        if isinstance(cell.work, StepConfig):
            data = PretextData(self.images, self.channels, monitor=self.monitor)
            train_step(cell.work, data, self.runtime, self.command)
        else:
            finish_run(cell.work, cell.folder, cell.needs, self.channels, self.runtime, self.command, self.probes)

    @staticmethod
    def skipped(cell: Cell[CurriculumConfig | StepConfig]) -> str:
        """The line of a finished cell: a step is reused, a run skipped."""
        if isinstance(cell.work, StepConfig):
            return f"{cell.work.task}: reusing the finished step {cell.name}"
        return f"{cell.name}: finished; skipped"


def finish_run(cfg: CurriculumConfig, folder: Path, step_keys: Sequence[str], channels: int, runtime: Runtime,
               command: str, probe_cache: dict[str, dict[str, Any]] | None = None) -> None:
    """Record the run (``config.json``: its command, or a resume command when the run started before), export
    its start backbone from its finished steps ``step_keys``, train the downstream protocol and write
    ``pretext.png`` (:func:`evaluate.plots.pretext_curves`, for a run with steps) and ``results.json``."""
    steps = []
    for key in step_keys:
        step = finished_step(runtime.runs_dir, key)
        if step is None:
            raise UserError(f"the step {key} of {folder.name} is not finished; run the same command again")
        steps.append(step)
    if is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / CONFIG_FILE
        record = json.loads(config.read_text()) if config.is_file() else {"curriculum": cfg.to_dict()}
        key = "resumed_with" if "command" in record else "command"
        record[key] = [*record.get(key, []), command] if key == "resumed_with" else command
        write_json_atomic(config, record)
    _export_start(cfg, channels, folder, runtime.runs_dir, steps, command)
    idist.barrier()
    data = _probe_data(cfg)
    probes = [probe_file(step_folder(runtime.runs_dir, s["key"]) / BACKBONE_FILE, cfg, data, channels, runtime,
                         probe_cache) for s in steps]
    final = probes[-1] if probes else probe_file(folder / BACKBONE_FILE, cfg, data, channels, runtime)
    downstream = _downstream(cfg, folder, runtime, command) | final
    recorded = ("key", "task", "lr", "epoch_losses", "knn_start", "epoch_knn")
    results = {
        "ordering": cfg.label(), "tasks": list(cfg.tasks), "init": cfg.init, "seed": cfg.seed,
        "downstream_task": downstream_label(cfg), "backbone": cfg.backbone, "image_size": cfg.image_size,
        "steps": [{k: s[k] for k in recorded if k in s} | {"probes": p} for s, p in zip(steps, probes, strict=True)],
        "downstream": downstream, "settings": cfg.to_dict(),
    }
    if is_main_process():
        write_json_atomic(folder / RESULTS_FILE, results)
        if steps:  # after the results: the report draws the picture for a run that lacks it
            save(pretext_curves(results["steps"], folder.name), folder / PRETEXT_CURVES)
        for path in checkpoints(folder / DOWNSTREAM_DIR):  # finished: classifier.safetensors and best.pt stay
            path.unlink(missing_ok=True)
    print_on_main(f"{folder.name}: balanced accuracy {downstream['balanced_accuracy']:.4f}"
                  + missing_classes_note(downstream)
                  + f" (k-NN {final['knn']['balanced_accuracy']:.4f}, "
                    f"linear {final['linear']['balanced_accuracy']:.4f})"
                  + (f", AIL {downstream['ail']:.3f}" if downstream["ail"] is not None else "")
                  + f" -> {folder / RESULTS_FILE}")
    idist.barrier()
