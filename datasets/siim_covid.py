"""SIIM-FISABIO-RSNA COVID-19 reader (registry name ``siim-covid``, root ``$CXR_SIIM_ROOT``).

Layout: ``train_study_level.csv`` (``id`` = ``<StudyInstanceUID>_study`` and
one one-hot column per class), ``train_image_level.csv`` (``id`` =
``<image uid>_image``, ``StudyInstanceUID``) and
``train/<study>/<series>/<image uid>.dcm``.

Classes (study level, the seed's Table 2): Negative for Pneumonia, Typical
Appearance, Indeterminate Appearance, Atypical Appearance. Every image takes
its study's class (the column holding the 1); a study without exactly one 1,
or an image whose study is not in the study file, is dropped with a logged
warning. Samples have ``label`` = that class and no ``findings``.

Splits: only the competition's training part is labelled, so ``train`` and
``valid`` (aliases ``val``, ``test``) are a seeded split of the *studies*,
stratified by class (:func:`datasets.tabular.stratified_holdout`, ``holdout``
fraction, default 0.2): all images of a study fall on the same side.

DICOMs are decoded by :func:`datasets.image_io.read_dicom` (modality LUT, VOI
LUT or window, bits-stored range, MONOCHROME1 inverted). A CSV image without a
DICOM under ``train/`` is an error naming it, or with ``on_error="skip"`` the
row is dropped with a warning.

Options: ``max_samples``, ``seed``, ``on_error``, ``holdout``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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

NAME = "siim-covid"
ENV_VAR = "CXR_SIIM_ROOT"
LAYOUT = "train_study_level.csv, train_image_level.csv and train/<study>/<series>/<image>.dcm"
CLASSES: tuple[str, ...] = (
    "Negative for Pneumonia",
    "Typical Appearance",
    "Indeterminate Appearance",
    "Atypical Appearance",
)
SPLITS = {"train": "train", "valid": "valid", "val": "valid", "test": "valid"}
OPTIONS = ("max_samples", "seed", "on_error", "holdout")
STUDY_SUFFIX = "_study"
IMAGE_SUFFIX = "_image"


def study_classes(path: Path) -> pd.Series:
    """Class index per StudyInstanceUID from ``train_study_level.csv`` (one-hot -> index)."""
    frame = read_layout_csv(path, ("id", *CLASSES), NAME, ENV_VAR, LAYOUT)
    onehot = onehot_matrix(frame, CLASSES, path, NAME, ENV_VAR, LAYOUT)
    valid = np.nansum(onehot == 1, axis=1) == 1
    if not valid.all():
        log.warning("%s: dropping %d studies without exactly one class in %s", NAME, int((~valid).sum()), path)
    uids = frame["id"].astype(str).str.removesuffix(STUDY_SUFFIX)
    return pd.Series(np.argmax(onehot == 1, axis=1)[valid], index=uids[valid].to_numpy())


def dicom_index(root: Path) -> dict[str, str]:
    """``{image uid: path}`` of every ``train/<study>/<series>/<image>.dcm``."""
    index: dict[str, str] = {}
    for folder, _, files in os.walk(root / "train"):
        for name in files:
            if name.lower().endswith(".dcm"):
                index[name[:-4]] = os.path.join(folder, name)
    return index


def siim_covid_dataset(
    root: Path,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    **options: Any,
) -> RecordDataset:
    """The SIIM-COVID images of ``split`` with their study classes (see the module docstring)."""
    if task is not None:
        raise UserError(f"{NAME} has its own classes {CLASSES}; label tasks do not apply")
    opts = reader_options(NAME, options)
    canonical = split_name(split, NAME, SPLITS)
    studies = study_classes(require_file(root, "train_study_level.csv", NAME, ENV_VAR, LAYOUT))
    image_csv = require_file(root, "train_image_level.csv", NAME, ENV_VAR, LAYOUT)
    images = read_layout_csv(image_csv, ("id", "StudyInstanceUID"), NAME, ENV_VAR, LAYOUT)
    study_of = images["StudyInstanceUID"].astype(str).to_numpy()
    known = np.isin(study_of, studies.index.to_numpy())
    if not known.all():
        log.warning("%s: dropping %d images whose study has no class", NAME, int((~known).sum()))
    ids = images["id"].astype(str).to_numpy()[known].astype(object)
    study_of = study_of[known]

    held_studies = studies.index[stratified_holdout(studies.to_numpy(), opts.holdout, opts.seed)]
    in_split = np.isin(study_of, held_studies.to_numpy()) == (canonical == "valid")
    ids, study_of = ids[in_split], study_of[in_split]

    index = dicom_index(root)
    if not index:
        raise layout_error(NAME, ENV_VAR, LAYOUT, f"no DICOM files under {root / 'train'}")
    uids = np.array([i.removesuffix(IMAGE_SUFFIX) for i in ids], dtype=object)
    found = np.array([u in index for u in uids], dtype=bool)
    if not found.all():
        first = f"{uids[~found][0]}.dcm"
        if opts.on_error == "raise":
            raise UserError(
                f"{NAME}: {int((~found).sum())} images of train_image_level.csv have no DICOM "
                f"under {root / 'train'} (first: {first})"
            )
        log.warning("%s: skipping %d images without a DICOM (first: %s)", NAME, int((~found).sum()), first)
    records = Records(
        paths=np.array([index[u] for u in uids[found]], dtype=object),
        ids=ids[found],
        labels=studies.loc[study_of[found]].to_numpy().astype(np.int64),
        groups=study_of[found].astype(object),
    )
    return make_dataset(records, opts, channels=1, resolution=resolution, augment=augment)


SPEC = DataSetSpec(
    name=NAME,
    description="SIIM-FISABIO-RSNA COVID-19 radiographs (DICOM) with 4 study-level classes",
    layout=LAYOUT,
    env_var=ENV_VAR,
    channels=1,
    schema=None,
    classes=CLASSES,
    factory=siim_covid_dataset,
    options=OPTIONS,
    groups="study",
)
