"""CheXpert v1.0 / v1.0-small reader (registry name ``chexpert``, root ``$CXR_CHEXPERT_ROOT``).

Layout: the root is the folder that holds ``train.csv`` and ``valid.csv``
(``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/``) with the images under
``train/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg`` and ``valid/...``.
The CSV ``Path`` values start with the release folder
(``CheXpert-v1.0-small/train/...``); they are resolved against the root's
parent, or against the root with that first folder dropped (a renamed root),
or against the root itself, whichever finds the first row's image.

Splits: ``train`` reads ``train.csv``; ``valid`` (aliases ``val``, ``test``)
reads ``valid.csv``. Labels come from
:func:`datasets.label_tables.read_chexpert_table` (raw 1 / 0 / -1 / blank
vectors, view filter); samples carry ``findings``, and ``label`` is the class
of the label task (rows outside its classes dropped) or -1 without one.

Options: ``views`` (default PA and AP; one string is one view; ``None`` all), ``max_samples``,
``seed``, ``on_error`` (see :mod:`datasets.tabular`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plumbing.errors import UserError

from .findings import CHEXPERT
from .label_tables import read_chexpert_table
from .label_tasks import LabelTask
from .spec import DataSetSpec
from .tabular import RecordDataset, layout_error, make_dataset, reader_options, require_file, split_name, table_records

NAME = "chexpert"
ENV_VAR = "CXR_CHEXPERT_ROOT"
LAYOUT = (
    "CheXpert-v1.0-small/{train,valid}.csv with {train,valid}/patientNNNNN/studyN/viewN_frontal.jpg "
    "(the root holds the CSVs)"
)
SPLITS = {"train": "train", "valid": "valid", "val": "valid", "test": "valid"}
OPTIONS = ("views", "max_samples", "seed", "on_error")


def resolve_paths(root: Path, relative: np.ndarray) -> np.ndarray:
    """Image paths (``[N]`` object array of str) for the CSV ``Path`` values (see the module docstring).

    The base is chosen by the first row; if no base finds its image, the
    layout is wrong and a :class:`UserError` says where it looked.
    """
    rel = pd.Series(relative, dtype=object).astype(str)
    bases = (
        lambda r: f"{root.parent}/" + r,
        lambda r: f"{root}/" + r.str.split("/", n=1).str[-1],
        lambda r: f"{root}/" + r,
    )
    first = rel.iloc[:1]
    for base in bases:
        if Path(base(first).iloc[0]).is_file():
            return base(rel).to_numpy(dtype=object)
    looked = ", ".join(base(first).iloc[0] for base in bases)
    raise layout_error(NAME, ENV_VAR, LAYOUT, f"image {first.iloc[0]} of the CSV not found (looked at {looked})")


def chexpert_dataset(
    root: Path,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    **options: Any,
) -> RecordDataset:
    """The CheXpert images of ``split`` as sample dicts (see the module docstring)."""
    opts = reader_options(NAME, options)
    csv = require_file(root, f"{split_name(split, NAME, SPLITS)}.csv", NAME, ENV_VAR, LAYOUT)
    try:
        table = read_chexpert_table(csv, views=opts.views)
    except UserError as exc:
        raise layout_error(NAME, ENV_VAR, LAYOUT, str(exc)) from None
    if len(table) == 0:
        raise UserError(f"{NAME}: {csv} has no rows with the views {opts.views}")
    records = table_records(resolve_paths(root, table.ids), table, task)
    return make_dataset(records, opts, channels=1, resolution=resolution, augment=augment)


SPEC = DataSetSpec(
    name=NAME,
    description="CheXpert v1.0(-small) chest radiographs with 14 finding labels",
    layout=LAYOUT,
    env_var=ENV_VAR,
    channels=1,
    schema=CHEXPERT,
    classes=None,
    factory=chexpert_dataset,
    options=OPTIONS,
    label_table=read_chexpert_table,
    groups="patient",
)
