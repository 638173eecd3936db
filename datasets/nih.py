"""NIH ChestX-ray8 / ChestX-ray14 reader (registry name ``chestxray8``, root ``$CXR_NIH_ROOT``).

Layout: ``images/NNNNNNNN_NNN.png`` (or the download's
``images_001/images/...`` .. ``images_012/images/...`` folders),
``Data_Entry_2017*.csv`` (the last by name when there are several, so the
``_v2020`` relabelling wins over the original), ``train_val_list.txt`` and
``test_list.txt``.

Splits: ``train`` = the images named in ``train_val_list.txt``; ``test``
(aliases ``valid``, ``val``) = those in ``test_list.txt``. When a list is
absent every row of the CSV belongs to the split, with a logged warning
(train and test then overlap). Labels come from
:func:`datasets.label_tables.read_nih_table` (14 findings + "No Finding",
view filter); samples carry ``findings``, ``label`` is the label task's class
or -1 without a task.

Options: ``views`` (default PA and AP; one string is one view; ``None`` all), ``max_samples``,
``seed``, ``on_error`` (see :mod:`datasets.tabular`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plumbing.errors import UserError

from .findings import NIH
from .label_tables import read_nih_table
from .label_tasks import LabelTask
from .spec import DataSetSpec
from .tabular import RecordDataset, layout_error, make_dataset, reader_options, split_name, table_records

log = logging.getLogger(__name__)

NAME = "chestxray8"
ENV_VAR = "CXR_NIH_ROOT"
LAYOUT = "images/NNNNNNNN_NNN.png, Data_Entry_2017*.csv, train_val_list.txt, test_list.txt"
SPLITS = {"train": "train", "test": "test", "valid": "test", "val": "test"}
SPLIT_LISTS = {"train": "train_val_list.txt", "test": "test_list.txt"}
OPTIONS = ("views", "max_samples", "seed", "on_error")


def find_label_csv(root: Path) -> Path:
    """The ``Data_Entry_2017*.csv`` of the root (the last by name)."""
    found = sorted(root.glob("Data_Entry_2017*.csv"))
    if not found:
        raise layout_error(NAME, ENV_VAR, LAYOUT, f"no Data_Entry_2017*.csv in {root}")
    return found[-1]


def image_paths(root: Path, names: np.ndarray) -> np.ndarray:
    """Paths (str) of the images ``names``: ``images/<name>``, or an index of ``images_*/images/``."""
    flat = root / "images"
    if flat.is_dir():
        return (f"{flat}/" + pd.Series(names, dtype=object).astype(str)).to_numpy(dtype=object)
    folders = sorted(root.glob("images_*/images"))
    if not folders:
        raise layout_error(NAME, ENV_VAR, LAYOUT, f"no images/ folder in {root}")
    index = {entry.name: entry.path for folder in folders for entry in os.scandir(folder)}
    # A name absent from the index keeps its images/ path, so reading it names the missing file.
    return np.array([index.get(n, f"{flat}/{n}") for n in names], dtype=object)


def split_rows(root: Path, split: str, ids: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows in the split's list file (all rows when the file is absent)."""
    listing = root / SPLIT_LISTS[split]
    if not listing.is_file():
        log.warning("%s: %s is missing, so the %s split holds every image of the CSV", NAME, listing, split)
        return np.ones(len(ids), dtype=bool)
    names = np.array(listing.read_text().split(), dtype=object)
    return np.isin(ids, names)


def nih_dataset(
    root: Path,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    **options: Any,
) -> RecordDataset:
    """The ChestX-ray8/14 images of ``split`` as sample dicts (see the module docstring)."""
    opts = reader_options(NAME, options)
    canonical = split_name(split, NAME, SPLITS)
    csv = find_label_csv(root)
    try:
        table = read_nih_table(csv, views=opts.views)
    except UserError as exc:
        raise layout_error(NAME, ENV_VAR, LAYOUT, str(exc)) from None
    table = table.subset(split_rows(root, canonical, table.ids))
    if len(table) == 0:
        raise UserError(f"{NAME}: no rows of {csv} in the {canonical} split with the views {opts.views}")
    records = table_records(image_paths(root, table.ids), table, task)
    return make_dataset(records, opts, channels=1, resolution=resolution, augment=augment)


SPEC = DataSetSpec(
    name=NAME,
    description="NIH ChestX-ray8/14 chest radiographs with 14 finding labels",
    layout=LAYOUT,
    env_var=ENV_VAR,
    channels=1,
    schema=NIH,
    classes=None,
    factory=nih_dataset,
    options=OPTIONS,
    label_table=read_nih_table,
    groups="patient",
)
