"""Grids of adaptation runs: one run folder per (alignment, seed) cell, skipped when finished, resumed when not.

A cell (:class:`plumbing.grid.Cell`) has the folder
``<runs-dir>/<prefix>-<label>-seed<seed>`` (``label`` is the alignment
preset, with ``+bbse`` / ``+em`` for a prior correction and ``+div<W>`` for a
diversity weight: :attr:`adapt.config.AdaptConfig.label`). Running the same grid
command again skips every cell that holds ``results.json``, resumes every
cell that holds a checkpoint from its newest one, and starts the others; a
cell whose recorded configuration differs from the one asked for is refused
in one line (give another ``--name``): :mod:`plumbing.grid`.

A finished cell holds ``config.json`` (configuration, command, resume
commands), ``checkpoint_<step>.pt``, ``tb/``, ``results.json``
(:func:`write_results`) and ``classifier.safetensors`` (the final network in
evaluation form, readable by ``evaluate.attention``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluate.metrics import MISSING, missing_classes_note
from evaluate.plots import adaptation_pictures
from models.model_file import CLASSIFIER_FILE, training_record
from plumbing.distributed import is_main_process
from plumbing.files import write_json_atomic
from plumbing.grid import Cell
from plumbing.run_folders import RESULTS_FILE, check_run_name, read_results_file

from .config import AdaptConfig
from .data import AdaptData, choices, known_labels
from .label_shift import class_shares
from .model import export_classifier
from .selection import criterion_text, select
from .trainer import DcanTrainer

TRAINED_BY = "python -m adapt.train"


def cell_name(prefix: str, cfg: AdaptConfig) -> str:
    """The cell's run folder name, ``<prefix>-<label>-seed<seed>`` (checked as a plain folder name)."""
    return check_run_name(f"{prefix}-{cfg.label}-seed{cfg.seed}")


def adapt_cell(prefix: str, cfg: AdaptConfig, runs_dir: Path) -> Cell[AdaptConfig]:
    """The grid cell of ``cfg``: its folder ``runs_dir/<prefix>-<label>-seed<seed>``, finished by ``results.json``,
    its settings the ``adapt`` record of ``config.json``."""
    name = cell_name(prefix, cfg)
    return Cell(name=name, folder=runs_dir / name, section="adapt", settings=cfg.to_dict(), work=cfg,
                finished_files=(RESULTS_FILE,))


def complete_results(results: dict[str, Any]) -> bool:
    """Whether a cell's ``results.json`` holds what a finished cell records: the seed and the ``final`` figure,
    every figure with its balanced accuracy (``None`` without target labels) and collapse flag (a criterion
    that chose nothing, as the oracle without target labels, has no figure)."""
    figures = results.get("figures")
    return isinstance(results.get("seed"), int) and isinstance(figures, dict) and "final" in figures and all(
        isinstance(figure, dict) and {"balanced_accuracy", "collapsed"} <= figure.keys()
        for figure in figures.values())


def finished_results(cell: Cell[AdaptConfig]) -> dict[str, Any]:
    """The ``results.json`` of a finished cell; a damaged one is a :class:`UserError` naming it."""
    return read_results_file(cell.folder / RESULTS_FILE, complete_results)


def evaluation_record(cfg: AdaptConfig) -> dict[str, Any]:
    """The target evaluation images as ``evaluate.attention`` reads them from ``config.json``."""
    evaluation = choices(cfg)[2]
    return {"name": evaluation.name, "root": evaluation.root, "version": evaluation.version,
            "setting": evaluation.setting, "length": evaluation.length}


SELECTED_FIGURES = ("step", "balanced_accuracy", "source_validation_balanced_accuracy", "information_maximisation",
                    "snd", "dev_risk", "bnm", "prediction_entropy", "collapsed", "prior_estimates")
"""What ``results.json`` keeps of the evaluation a selection criterion chose."""


def selected_figures(entry: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SELECTED_FIGURES` of one evaluation of a cell's history (``None`` for one it lacks: no target
    labels, or a score an older run did not record)."""
    return {k: entry.get(k) for k in SELECTED_FIGURES}


def prior_record(cfg: AdaptConfig, data: AdaptData) -> dict[str, Any]:
    """The class priors beside the estimates: ``source_prior`` (``batches``: what training saw,
    ``validation_images``: what the estimators' confusion matrix saw) and ``target_prior`` (``asked``: the
    ``--target-prior`` text; ``drawn``: the prior resampled to; the oracle figures ``true``, of the target evaluation
    images, and ``true_adaptation``, of the adaptation images the estimates are made on, where labelled)."""
    def shares(images: Any) -> list[float] | None:
        labels = known_labels(images)
        return None if labels is None else class_shares(labels, len(data.classes)).tolist()

    target: dict[str, Any] = {"asked": cfg.target_prior}
    if data.target_prior is not None:
        target["drawn"] = data.target_prior.tolist()
    truth = {"true": shares(data.target_evaluation), "true_adaptation": shares(data.target)}
    return {"source_prior": {"batches": data.source_batch_prior.tolist(),
                             "validation_images": shares(data.source_validation)},
            "target_prior": target | {k: v for k, v in truth.items() if v is not None}}


def write_results(run_dir: Path, cfg: AdaptConfig, trainer: DcanTrainer, data: AdaptData) -> dict[str, Any]:
    """``results.json``, the exported classifier and the pictures (:func:`evaluate.plots.adaptation_pictures`:
    ``curves.png``, ``confusion.png``) (rank 0); returns the results on every rank."""
    history = trainer.state.history
    chosen = select(history)
    final = chosen["final"]
    record = trainer.state.config
    results = {
        "trained_by": TRAINED_BY,
        "source": cfg.source,
        "target": cfg.target,
        "alignment": cfg.label,
        "prior_correction": cfg.prior_correction,
        "seed": cfg.seed,
        "task": None if cfg.version is None else f"v{cfg.version}-{cfg.setting}",
        "classes": list(data.classes),
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "init": record.get("init_provenance"),
        "steps": cfg.steps,
        "balanced_accuracy": final.get("balanced_accuracy"),
        "recall": final.get("recall"),
        "confusion_matrix": final.get("confusion_matrix"),
        "predicted_histogram": final["predicted_histogram"],
        "collapsed": final["collapsed"],
        "prior_estimates": final["prior_estimates"],
        "figures": {name: selected_figures(entry) for name, entry in chosen.items()},
        "figure_criteria": {name: criterion_text(name) for name in chosen},
        "history": history,
        "images": data.sizes(),
    } | prior_record(cfg, data) | ({MISSING: final[MISSING]} if MISSING in final else {})
    if is_main_process():
        training = training_record(TRAINED_BY, record, alignment=cfg.label, steps=cfg.steps)
        export_classifier(run_dir / CLASSIFIER_FILE, trainer.model, cfg, data.classes, training)
        write_json_atomic(run_dir / RESULTS_FILE, results)
        adaptation_pictures(run_dir, results)  # after the results: the report draws them for a cell that lacks them
    return results


def summary_line(results: dict[str, Any]) -> str:
    """The cell's closing line: its final balanced accuracy, qualified where the evaluation set lacks a class
    (:func:`evaluate.metrics.missing_classes_note`), or that the target has no labels; and its collapse."""
    collapsed = f", collapsed onto {results['collapsed']}" if results["collapsed"] else ""
    if results["balanced_accuracy"] is None:
        return (f"{results['alignment']} seed {results['seed']}: no target labels, label-free figures only"
                f"{collapsed}")
    return (f"{results['alignment']} seed {results['seed']}: target balanced accuracy "
            f"{results['balanced_accuracy']:.4f}{missing_classes_note(results)} (final step){collapsed}")
