"""Your own images (registry name ``folder``, root ``$CXR_FOLDER_ROOT``): every PNG, JPEG or DICOM file of a folder.

Images: every file under the root, in any subfolder, whose suffix is
``.png``, ``.jpg``, ``.jpeg``, ``.dcm``, ``.dicom`` or ``.dic`` (any case;
names starting with ``.`` are skipped), in the order of their paths relative
to the root, so the same folder always gives the same images. They are
decoded by :func:`datasets.image_io.read_image` (8- and 16-bit PNG / JPEG;
DICOM through pydicom with its modality and VOI LUT or window, MONOCHROME1
inverted) as radiographs (one channel). A sample's ``id`` is its path
relative to the root.

Labels are optional, from ``labels.csv`` in the root, one row per image:

* ``path`` (required): the image's path relative to the root; a path that is
  not one of the images is an error naming it, and so is a path listed twice.
* either ``class``: a class name of the label task (any case; blank: the
  image has no label), or one column per finding of the CheXpert schema
  (:data:`datasets.findings.CHEXPERT`; 1 / 0 / -1 / blank, a missing finding
  column is blank throughout) to which the label-task policy of
  :mod:`datasets.label_tasks` applies. Both, or neither, is an error.
* ``patient`` (optional): images of one patient stay on one side of every
  split; a blank patient is the image alone.
* ``split`` (optional): ``train``, ``val`` or ``test`` on every row.

Other columns are ignored. Images without a row, and every image when there
is no ``labels.csv``, are *unlabelled*: ``label`` -1, no findings, always in
``train``, and a label task keeps them (they serve adaptation and pretext
training; the commands that need labels drop them:
:func:`evaluate.protocol.task_data.labelled`).

Label task. With a ``class`` column the label is the class's index in the
task's classes (a name outside them is an error naming it and the task's
classes); without a task every name must be a class of some task. With
finding columns the policy gives the class; a listed image the policy
excludes (class -1) is dropped, as in the other readers. Without a task
every label is -1. Samples carry ``findings`` (the raw vector, blank for
unlisted images) only when ``labels.csv`` has finding columns.

Splits (``train``, ``val`` alias ``valid``, ``test``), images with a row only:

* with a ``split`` column, the rows say it; when no row says ``val``, ``val``
  is a seeded 10% of the ``train`` rows, taken as below;
* without one, whole groups (patients where the ``patient`` column gives
  them, else single images) in a seeded order (option ``seed``) go to
  ``test`` until it holds ``holdout`` (default 20%) of the listed images,
  then to ``val`` until it holds 10% of them (each at least one image), and
  the rest to ``train``.

``val`` is the spec's :attr:`~datasets.spec.DataSetSpec.validation_split`:
it chooses the learning rate and the best epoch of a model trained on
``train``; ``test`` is the held-out :attr:`~datasets.spec.DataSetSpec.eval_split`.
A held-out split with no image is a :class:`UserError` (for a folder
without labels a :class:`~datasets.tabular.NoLabelsError`: the command needs
labelled images).

Errors (one :class:`UserError` line): no image under the root; a
``labels.csv`` that cannot be read, lacks ``path`` or has neither ``class``
nor finding columns, names a missing file, a bad finding value, a class
name outside the task or a split other than train / val / test. An
unreadable image is one line naming the file, or with ``on_error="skip"``
skipped with one warning (:class:`datasets.tabular.RecordDataset`).

Options: ``max_samples``, ``seed``, ``on_error``, ``holdout`` (see :mod:`datasets.tabular`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from plumbing.errors import UserError

from .findings import CHEXPERT
from .image_io import DICOM_SUFFIXES
from .label_tasks import VERSIONS, LabelTask, assign_classes
from .spec import DataSetSpec
from .tabular import (
    NoLabelsError,
    RecordDataset,
    Records,
    layout_error,
    make_dataset,
    read_layout_csv,
    reader_options,
    split_name,
)

log = logging.getLogger(__name__)

NAME = "folder"
ENV_VAR = "CXR_FOLDER_ROOT"
LABELS_FILE = "labels.csv"
LAYOUT = (
    "PNG, JPEG or DICOM files in any subfolders, and optionally labels.csv with the columns path and either class "
    "or CheXpert's finding columns (optional: patient, split)"
)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)
SPLITS = {"train": "train", "val": "val", "valid": "val", "test": "test"}
SPLIT_VALUES: tuple[str, ...] = ("train", "val", "test")
OPTIONS = ("max_samples", "seed", "on_error", "holdout")
VALIDATION_FRACTION = 0.1
"""Share of the listed images in ``val`` when ``labels.csv`` does not say (module docstring)."""
EVERY_CLASS: tuple[str, ...] = tuple(dict.fromkeys(c for classes in VERSIONS.values() for c in classes))


@dataclass(frozen=True, eq=False)
class FolderLabels:
    """``labels.csv`` laid over the images of the folder (row ``i`` = image ``i`` in path order).

    Attributes:
        listed: ``[N]`` bool, the image has a row.
        classes: ``[N]`` object array of canonical class names (``""``: none), or ``None`` (finding columns).
        findings: ``[N, K]`` float32 raw finding vectors over CheXpert's columns (nan for unlisted images),
            or ``None`` (a ``class`` column).
        patients: ``[N]`` object array of groups (the patient, else the image's own path), or ``None``.
        splits: ``[N]`` object array of the ``split`` column (``""`` for unlisted images), or ``None``.
    """

    listed: np.ndarray
    classes: np.ndarray | None
    findings: np.ndarray | None
    patients: np.ndarray | None
    splits: np.ndarray | None


def image_paths(root: Path) -> list[str]:
    """The image files under ``root`` as sorted POSIX paths relative to it; a :class:`UserError` when none."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(folder, name).relative_to(root).as_posix())
    if not found:
        raise layout_error(NAME, ENV_VAR, LAYOUT, f"no PNG, JPEG or DICOM file under {root}")
    return sorted(found)


def _text(values: pd.Series) -> np.ndarray:
    """A column as stripped strings, blank cells as ``""`` (``[N]`` object)."""
    return values.astype(object).where(values.notna(), "").astype(str).str.strip().to_numpy(dtype=object)


def _canonical_class(name: str, row: str, csv: Path) -> str:
    known = {c.lower(): c for c in EVERY_CLASS}
    if name.lower() not in known:
        raise UserError(f"{csv}: class {name!r} of {row} is no class of a label task; known: {', '.join(EVERY_CLASS)}")
    return known[name.lower()]


def read_labels(root: Path, paths: list[str]) -> FolderLabels | None:
    """``root/labels.csv`` checked and laid over ``paths`` (:func:`image_paths`); ``None`` when there is none."""
    csv = root / LABELS_FILE
    if not csv.is_file():
        return None
    frame = read_layout_csv(csv, ("path",), NAME, ENV_VAR, LAYOUT)
    frame.columns = [str(c).strip() for c in frame.columns]
    finding_columns = [c for c in CHEXPERT.columns if c in frame.columns]
    has_class = "class" in frame.columns
    if has_class == bool(finding_columns):
        problem = "both a class column and finding columns" if has_class else "neither a class nor a finding column"
        raise layout_error(NAME, ENV_VAR, LAYOUT, f"{csv} has {problem} (findings: {', '.join(CHEXPERT.columns)})")
    rows = np.array([PurePosixPath(os.path.normpath(p).replace(os.sep, "/")).as_posix()
                     for p in _text(frame["path"])], dtype=object)
    position = {p: i for i, p in enumerate(paths)}
    for p in rows:
        if p not in position:
            missing = root / p
            why = "is no PNG, JPEG or DICOM file" if missing.is_file() else "does not exist"
            raise UserError(f"{csv} names {p}, which {why} under {root}")
    unique, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"{csv} lists {unique[counts > 1][0]} more than once")
    at = np.array([position[p] for p in rows], dtype=np.int64)
    n = len(paths)
    listed = np.zeros(n, dtype=bool)
    listed[at] = True

    classes = findings = patients = splits = None
    if has_class:
        classes = np.full(n, "", dtype=object)
        classes[at] = [_canonical_class(c, p, csv) if c else "" for c, p in zip(_text(frame["class"]), rows,
                                                                               strict=True)]
    else:
        values = frame[finding_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        bad = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0))) | (np.isnan(values)
                                                                         & frame[finding_columns].notna().to_numpy())
        if bad.any():
            i, j = np.argwhere(bad)[0]
            value = frame[finding_columns[j]].iloc[i]
            value = value.item() if isinstance(value, np.generic) else value
            raise UserError(f"{csv}: {finding_columns[j]} of {rows[i]} is {value!r}; finding values are 1, 0, -1 "
                            "or blank")
        findings = np.full((n, len(CHEXPERT.columns)), np.nan, dtype=np.float32)
        findings[np.ix_(at, CHEXPERT.indices(finding_columns))] = values
    if "patient" in frame.columns:
        patients = np.array(paths, dtype=object)
        given = _text(frame["patient"])
        patients[at[given != ""]] = given[given != ""]
    if "split" in frame.columns:
        text = _text(frame["split"])
        given = np.array([s.lower() for s in text], dtype=object)
        wrong = ~np.isin(given, SPLIT_VALUES)
        if wrong.any():
            i = int(np.argmax(wrong))
            raise UserError(f"{csv}: split {text[i]!r} of {rows[i]}; use one of {', '.join(SPLIT_VALUES)}")
        splits = np.full(n, "", dtype=object)
        splits[at] = given
    return FolderLabels(listed, classes, findings, patients, splits)


def take_groups(groups: np.ndarray, candidates: np.ndarray, want: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``[N]``: whole groups of the ``candidates`` rows, in ``rng``'s order, until they hold at least
    ``want`` images (every candidate when they hold fewer; none when there is no candidate)."""
    if not candidates.any():
        return np.zeros(len(groups), dtype=bool)
    names, codes = np.unique(groups[candidates], return_inverse=True)
    order = rng.permutation(len(names))
    sizes = np.bincount(codes, minlength=len(names))[order]
    chosen = order[: int(np.searchsorted(np.cumsum(sizes), want)) + 1]
    taken = np.zeros(len(groups), dtype=bool)
    taken[np.flatnonzero(candidates)[np.isin(codes, chosen)]] = True
    return taken


def share(fraction: float, n: int) -> int:
    """``max(1, round(fraction * n))`` images: a split asked for holds at least one."""
    return max(1, round(fraction * n))


def assign_splits(paths: list[str], labels: FolderLabels | None, holdout: float, seed: int) -> np.ndarray:
    """The split of every image (``[N]`` object array of ``train`` / ``val`` / ``test``; module docstring)."""
    n = len(paths)
    split = np.full(n, "train", dtype=object)
    if labels is None:
        return split
    groups = labels.patients if labels.patients is not None else np.array(paths, dtype=object)
    rng = np.random.default_rng(seed)
    if labels.splits is not None:
        split[labels.listed] = labels.splits[labels.listed]
        if not (split == "val").any():
            train = labels.listed & (split == "train")
            split[take_groups(groups, train, share(VALIDATION_FRACTION, int(train.sum())), rng)] = "val"
        if labels.patients is not None:
            sides = pd.Series(split).groupby(groups).nunique()
            if (sides > 1).any():
                log.warning("%s: patient %s has images in more than one split of labels.csv", NAME,
                            sides.index[sides.to_numpy() > 1][0])
        return split
    listed = int(labels.listed.sum())
    test = take_groups(groups, labels.listed, share(holdout, listed), rng)
    val = take_groups(groups, labels.listed & ~test, share(VALIDATION_FRACTION, listed), rng)
    split[test], split[val] = "test", "val"
    return split


def task_labels(
    labels: FolderLabels | None, task: LabelTask | None, n: int, csv: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Class index of each of the ``n`` images (``[N]`` int64, -1 unlabelled) and which the task keeps (``[N]`` bool).
    """
    if labels is None or task is None:
        return np.full(n, -1, dtype=np.int64), np.ones(n, dtype=bool)
    if labels.classes is not None:
        outside = sorted({c for c in labels.classes if c and c not in task.classes})
        if outside:
            raise UserError(f"{csv}: class {outside[0]!r} is not a class of the task {task.name}; its classes: "
                            f"{', '.join(task.classes)}")
        index = {c: k for k, c in enumerate(task.classes)}
        return np.array([index.get(c, -1) for c in labels.classes], dtype=np.int64), np.ones(n, dtype=bool)
    classes = np.full(n, -1, dtype=np.int64)
    classes[labels.listed] = assign_classes(labels.findings[labels.listed], CHEXPERT, task)
    return classes, ~labels.listed | (classes >= 0)


def folder_dataset(
    root: Path | str,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    **options: Any,
) -> RecordDataset:
    """The images of ``split`` under ``root`` with their labels (see the module docstring)."""
    if "://" in str(root):
        raise UserError(f"{NAME} reads a local folder, not {root}")
    root = Path(root)
    opts = reader_options(NAME, options)
    canonical = split_name(split, NAME, SPLITS)
    paths = image_paths(root)
    labels = read_labels(root, paths)
    csv = root / LABELS_FILE
    classes, kept = task_labels(labels, task, len(paths), csv)
    rows = (assign_splits(paths, labels, opts.holdout, opts.seed) == canonical) & kept
    if not rows.any():
        if labels is None:
            raise NoLabelsError(f"{NAME} {root} has no labels (no {LABELS_FILE}), so no {canonical} images; "
                                "this needs labelled images")
        raise UserError(f"{NAME} {root}: no image of {LABELS_FILE} is in the {canonical} split"
                        + (f" of the task {task.name}" if task is not None else ""))
    records = Records(
        paths=np.array([str(root / p) for p in paths], dtype=object),
        ids=np.array(paths, dtype=object),
        labels=classes,
        findings=None if labels is None else labels.findings,
        groups=None if labels is None else labels.patients,
    )
    return make_dataset(records.subset(rows), opts, channels=1, resolution=resolution, augment=augment)


SPEC = DataSetSpec(
    name=NAME,
    description="your own radiographs: every PNG, JPEG or DICOM file of a folder, labels optional (labels.csv)",
    layout=LAYOUT,
    env_var=ENV_VAR,
    channels=1,
    schema=CHEXPERT,
    classes=None,
    factory=folder_dataset,
    options=OPTIONS,
    eval_split="test",
    validation_split="val",
    groups="patient",
)
