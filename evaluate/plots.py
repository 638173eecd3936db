"""The pictures run folders keep and the study report shows, drawn with matplotlib as PNG.

Each picture is drawn from what a run's ``results.json`` (or a GAN run's
``samples/label_fidelity.jsonl``) holds, so the trainers write it beside
their results and :mod:`evaluate.study` draws the same picture for a run
folder that lacks it (one finished before the pictures existed):

* :func:`adaptation_curves`: an adaptation cell's balanced accuracy on the
  target evaluation set and on the source validation set over the steps,
  with the evaluations that flagged a collapse marked;
* :func:`confusion_picture`: a confusion matrix (rows true, columns
  predicted), each cell annotated with its count and shaded by its share of
  the row (so a rare class reads as well as a common one);
* :func:`pretext_curves`: every step of a curriculum run, its pretext loss
  and the monitor's k-NN balanced accuracy per epoch, the steps one after
  the other on one axis of epochs;
* :func:`fidelity_curves`: a GAN run's label fidelity per class over kimg.

Figures are built with :class:`matplotlib.figure.Figure` (the Agg canvas; no
pyplot state, no display needed) and written atomically by :func:`save`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from plumbing.files import atomic_path

DPI = 100
ADAPTATION_CURVES = "curves.png"
CONFUSION = "confusion.png"
PRETEXT_CURVES = "pretext.png"


def save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically (no half-written picture under its name)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def adaptation_curves(history: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Balanced accuracy per evaluation of an adaptation cell: target evaluation set (when labelled) and source
    validation set; evaluations with a collapse flag (one class over 95% of the target predictions) as red rings."""
    figure = Figure(figsize=(5.0, 3.2))
    ax = figure.add_subplot()
    steps = [entry["step"] for entry in history]
    for key, label, style in (("balanced_accuracy", "target evaluation", "o-"),
                              ("source_validation_balanced_accuracy", "source validation", "s--")):
        values = [np.nan if entry.get(key) is None else entry[key] for entry in history]
        if not all(np.isnan(values)):
            ax.plot(steps, values, style, label=label, markersize=4)
    collapsed = [(entry["step"], entry.get("balanced_accuracy") or 0.0) for entry in history if entry.get("collapsed")]
    if collapsed:
        xs, ys = zip(*collapsed, strict=True)
        ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="red", label="collapse flagged", zorder=3)
    ax.set(xlabel="step", ylabel="balanced accuracy", ylim=(0.0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure


def confusion_picture(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """The confusion matrix (rows true class, columns predicted), counts written in, shaded by row share."""
    counts = np.asarray(matrix, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    size = 1.2 + 0.55 * len(classes)
    figure = Figure(figsize=(size + 1.2, size))
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(col, row, f"{int(count)}", ha="center", va="center", fontsize=8,
                color="white" if shares[row, col] > 0.6 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=35, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels=list(classes), fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return figure


def pretext_curves(steps: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Pretext loss (left) and monitor k-NN balanced accuracy (right; left out for steps trained without a
    monitor) per epoch of each step of a curriculum run, the steps one after the other; the k-NN before the first
    epoch (``knn_start``) is drawn at the step's start."""
    monitored = any(step.get("epoch_knn") for step in steps)
    figure = Figure(figsize=(8.0 if monitored else 4.5, 3.0))
    loss_ax, knn_ax = figure.subplots(1, 2) if monitored else (figure.add_subplot(), None)
    offset = 0
    for step in steps:
        name = str(step.get("task") or step.get("key", "step"))
        losses = list(step.get("epoch_losses") or [])
        knn = list(step.get("epoch_knn") or [])
        epochs = np.arange(offset + 1, offset + len(losses) + 1)
        loss_ax.plot(epochs, losses, "o-", markersize=3, label=name)
        if knn and knn_ax is not None:
            start = step.get("knn_start")
            xs = ([offset] if start is not None else []) + list(range(offset + 1, offset + len(knn) + 1))
            knn_ax.plot(xs, ([start] if start is not None else []) + knn, "o-", markersize=3, label=name)
        offset += len(losses)
    loss_ax.set(xlabel="epoch", ylabel="pretext loss", title=f"{title}: pretext loss")
    if knn_ax is not None:
        knn_ax.set(xlabel="epoch", ylabel="monitor k-NN balanced accuracy", title="monitor", ylim=(0.0, 1.02))
    for ax in (loss_ax, knn_ax)[: 2 if monitored else 1]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def fidelity_curves(records: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Label fidelity per class (the probe's agreement with the asked class) over kimg of a GAN run."""
    figure = Figure(figsize=(5.0, 3.2))
    ax = figure.add_subplot()
    kimg = [record["kimg"] for record in records]
    classes = list(records[0]["agreement"]) if records else []
    for name in classes:
        ax.plot(kimg, [record["agreement"].get(name, np.nan) for record in records], "o-", markersize=3, label=name)
    ax.set(xlabel="kimg", ylabel="label fidelity", ylim=(0.0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if classes:
        ax.legend(fontsize=7)
    return figure


def write_confusion(run_dir: Path, matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Path:
    """``run_dir / confusion.png``: :func:`confusion_picture` of ``matrix``."""
    return save(confusion_picture(matrix, classes, title), run_dir / CONFUSION)


def adaptation_pictures(run_dir: Path, results: Mapping[str, Any]) -> list[Path]:
    """An adaptation cell's ``curves.png`` and, where the target evaluation set is labelled, ``confusion.png``
    (the final step's matrix)."""
    written = [save(adaptation_curves(results["history"], run_dir.name), run_dir / ADAPTATION_CURVES)]
    if results.get("confusion_matrix") is not None:
        written.append(write_confusion(run_dir, results["confusion_matrix"], results["classes"],
                                       f"{run_dir.name}: final step"))
    return written
