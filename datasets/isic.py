"""ISIC 2019 dermoscopy reader (registry name ``isic2019``, root ``$CXR_ISIC_ROOT``).

Layout: ``ISIC_2019_Training_Input/ISIC_NNNNNNN.jpg`` and
``ISIC_2019_Training_GroundTruth.csv`` (``image`` and one-hot columns MEL, NV,
BCC, AK, BKL, DF, VASC, SCC, UNK). The eight diagnostic classes are the
columns MEL .. SCC in that order; a row without exactly one 1 among them (UNK,
never set in the training data) is dropped with a logged warning. Images are
RGB (C = 3); samples have ``label`` = the class and no ``findings``.

Splits: the challenge's test labels are not public, so ``train`` and
``valid`` (aliases ``val``, ``test``) are a seeded split of the training
images stratified by class (:func:`datasets.tabular.stratified_holdout`,
``holdout`` fraction, default 0.2), which on the 25,331 images gives the
seed's 20,264 / 5,067.

Options: ``max_samples``, ``seed``, ``on_error``, ``holdout``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from plumbing.errors import UserError

from .label_tasks import LabelTask
from .spec import DataSetSpec
from .tabular import (
    RecordDataset,
    Records,
    layout_error,
    make_dataset,
    onehot_matrix,
    read_layout_csv,
    reader_options,
    require_file,
    split_name,
    stratified_holdout,
)

log = logging.getLogger(__name__)

NAME = "isic2019"
ENV_VAR = "CXR_ISIC_ROOT"
LAYOUT = "ISIC_2019_Training_Input/ISIC_NNNNNNN.jpg and ISIC_2019_Training_GroundTruth.csv"
CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
IMAGE_DIR = "ISIC_2019_Training_Input"
SPLITS = {"train": "train", "valid": "valid", "val": "valid", "test": "valid"}
OPTIONS = ("max_samples", "seed", "on_error", "holdout")


def read_ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image names ``[N]`` and class indices ``[N]`` of the ground-truth CSV (one-hot -> index)."""
    frame = read_layout_csv(path, ("image", *CLASSES), NAME, ENV_VAR, LAYOUT)
    onehot = onehot_matrix(frame, CLASSES, path, NAME, ENV_VAR, LAYOUT) == 1
    valid = onehot.sum(axis=1) == 1
    if not valid.all():
        log.warning("%s: dropping %d images without exactly one of %s", NAME, int((~valid).sum()), ", ".join(CLASSES))
    names = frame["image"].astype(str).to_numpy()[valid].astype(object)
    return names, np.argmax(onehot, axis=1)[valid].astype(np.int64)


def isic_dataset(
    root: Path,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    **options: Any,
) -> RecordDataset:
    """The ISIC 2019 images of ``split`` (RGB) with their diagnostic classes (see the module docstring)."""
    if task is not None:
        raise UserError(f"{NAME} has its own classes {CLASSES}; label tasks do not apply")
    opts = reader_options(NAME, options)
    canonical = split_name(split, NAME, SPLITS)
    names, classes = read_ground_truth(require_file(root, GROUND_TRUTH, NAME, ENV_VAR, LAYOUT))
    folder = root / IMAGE_DIR
    if not folder.is_dir():
        raise layout_error(NAME, ENV_VAR, LAYOUT, f"{folder} does not exist")
    held = stratified_holdout(classes, opts.holdout, opts.seed)
    rows = held if canonical == "valid" else ~held
    records = Records(
        paths=np.array([f"{folder}/{n}.jpg" for n in names[rows]], dtype=object),
        ids=names[rows],
        labels=classes[rows],
    )
    return make_dataset(records, opts, channels=3, resolution=resolution, augment=augment)


SPEC = DataSetSpec(
    name=NAME,
    description="ISIC 2019 dermoscopy images (RGB) with 8 diagnostic classes",
    layout=LAYOUT,
    env_var=ENV_VAR,
    channels=3,
    schema=None,
    classes=CLASSES,
    factory=isic_dataset,
    options=OPTIONS,
)
