"""Label tables: one finding vector per image, read from a data set's label CSV.

A :class:`LabelTable` holds, row by row, an image id, its view, its patient and
its finding vector over a :class:`~datasets.findings.FindingSchema`:

* CheXpert (``train.csv`` / ``valid.csv`` of CheXpert v1.0 and v1.0-small):
  the id is the ``Path`` column; the vector holds the raw label values
  (1 / 0 / -1 / nan = blank) of the 14 label columns. torchxrayvision's
  ``CheX_Dataset`` turns -1 into nan, losing the uncertain / blank
  distinction the label-task policy needs, so the raw columns are read here.
  The view follows torchxrayvision's convention: the ``AP/PA`` value for a
  frontal image (``PA``, ``AP``, and rarely ``LL`` / ``RL``), ``L`` for a
  lateral image, ``UNKNOWN`` for a frontal image without an ``AP/PA`` value.
  The patient is the ``patientNNNNN`` part of the path (the path itself when
  it has none, so such an image is its own patient).
* ChestX-ray8/14 (NIH ``Data_Entry_2017*.csv``): the id is ``Image Index``;
  a finding is 1 when it is one of the '|'-separated ``Finding Labels`` and 0
  otherwise; the "No Finding" column is 1 exactly when the string is
  "No Finding". The view is ``View Position``, the patient ``Patient ID``.

A view filter (:func:`check_views`) names views of :data:`VIEWS`; a single
string is one view.

torchxrayvision's wheel ships both training label files; :func:`bundled_csv`
locates them without importing the package (which would import torch), and the
bundled reads are cached. Arrays of a table are read-only, so the cached table
can be shared: copy an array before changing it.
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.errors import UserError

from .findings import CHEXPERT, NIH, NO_FINDING, FindingSchema

CHEXPERT_BUNDLED = "chexpert_train.csv.gz"
NIH_BUNDLED = "Data_Entry_2017_v2020.csv.gz"
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")
VIEWS: tuple[str, ...] = ("PA", "AP", "LL", "RL", "L", "UNKNOWN")  # every view a table can hold

_CHEXPERT_META = ("Path", "Frontal/Lateral", "AP/PA")
_NIH_META = ("Image Index", "Finding Labels", "Patient ID", "View Position")
_RAW_VALUES = np.array([1.0, 0.0, -1.0], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class LabelTable:
    """Finding vectors of the images of one label file.

    Attributes:
        schema: the finding schema of ``vectors``.
        ids: ``[N]`` object array of image ids (CheXpert path, NIH image index).
        views: ``[N]`` object array of views (``PA``, ``AP``, ``LL``, ``L``, ...).
        vectors: ``[N, K]`` float32 finding vectors over ``schema.columns``.
        patients: ``[N]`` object array of patient ids.
    """

    schema: FindingSchema
    ids: np.ndarray
    views: np.ndarray
    vectors: np.ndarray
    patients: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.vectors.shape != (n, len(self.schema.columns)):
            raise ValueError(
                f"vectors of shape {self.vectors.shape} do not match {n} ids and {len(self.schema.columns)} columns"
            )
        if len(self.views) != n or len(self.patients) != n:
            raise ValueError("ids, views and patients must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> LabelTable:
        """The table restricted to ``rows`` (a boolean mask or integer indices)."""
        return LabelTable(
            schema=self.schema,
            ids=self.ids[rows],
            views=self.views[rows],
            vectors=self.vectors[rows],
            patients=self.patients[rows],
        )

    def with_views(self, views: str | Sequence[str] | None) -> LabelTable:
        """The rows whose view is one of ``views`` (:func:`check_views`); ``None`` keeps every row."""
        kept = check_views(views)
        if kept is None:
            return self
        return self.subset(np.isin(self.views, np.asarray(kept, dtype=object)))


def check_views(views: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """A view filter as a tuple of names of :data:`VIEWS` (a string is one view); ``None`` keeps every view.

    Anything else (an unknown name, no name, a value that is not a string)
    is a one-line :class:`UserError` that lists the known views.
    """
    if views is None:
        return None
    names = (views,) if isinstance(views, str) else views
    known = f"known views: {', '.join(VIEWS)} (or None for every view)"
    if not isinstance(names, Sequence) or not names:
        raise UserError(f"views must name at least one view, not {views!r}; {known}")
    unknown = [v for v in names if not isinstance(v, str) or v not in VIEWS]
    if unknown:
        raise UserError(f"unknown view {', '.join(map(repr, unknown))}; {known}")
    return tuple(names)


def bundled_csv(name: str) -> Path:
    """The path of a file in torchxrayvision's ``data`` folder."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"torchxrayvision is not installed, so its bundled label file {name} is not available (pass a CSV path)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise UserError(f"torchxrayvision's data folder has no file {name} (looked for {path})")
    return path


def _read_csv(path: Path, required: Sequence[str], layout: str, dtype: dict[str, str]) -> pd.DataFrame:
    """Read the ``required`` columns of a CSV; any failure is a one-line :class:`UserError`."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"label file {path} {problem}; expected {layout}")
    try:
        header = pd.read_csv(path, nrows=0)
        missing = [c for c in required if c not in header.columns]
        if missing:
            raise UserError(f"label file {path} lacks the columns {', '.join(missing)}; expected {layout}")
        return pd.read_csv(path, usecols=list(required), dtype=dtype)
    except UserError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # parser, decoding and compression errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"label file {path} could not be read ({reason}); expected {layout}") from None


def _object_array(values: pd.Series) -> np.ndarray:
    return np.asarray(values.astype(str).to_numpy(), dtype=object)


def _chexpert_table(path: Path) -> LabelTable:
    columns = CHEXPERT.columns
    layout = f"a CheXpert CSV with the columns {', '.join(_CHEXPERT_META)} and {', '.join(columns)}"
    frame = _read_csv(path, (*_CHEXPERT_META, *columns), layout, {c: "float32" for c in columns})
    vectors = frame[list(columns)].to_numpy(dtype=np.float32)
    bad = ~(np.isnan(vectors) | np.isin(vectors, _RAW_VALUES))
    if bad.any():
        names = sorted({columns[j] for j in np.nonzero(bad)[1]})
        raise UserError(f"label file {path} has values other than 1, 0, -1 or blank in {', '.join(names)}")
    frontal = frame["Frontal/Lateral"].astype(str).str.strip().str.lower() == "frontal"
    views = frame["AP/PA"].where(frontal, "L").fillna("UNKNOWN")
    paths = frame["Path"].astype(str)
    patients = paths.str.extract(r"(patient\d+)", expand=False).fillna(paths)
    return LabelTable(CHEXPERT, _object_array(paths), _object_array(views), vectors, _object_array(patients))


def _nih_table(path: Path) -> LabelTable:
    layout = f"an NIH Data_Entry CSV with the columns {', '.join(_NIH_META)}"
    frame = _read_csv(path, _NIH_META, layout, {"Finding Labels": "str", "Image Index": "str"})
    labels = frame["Finding Labels"].fillna("").astype(str).str.strip().str.replace(r"\s*\|\s*", "|", regex=True)
    dummies = labels.str.get_dummies(sep="|")
    unknown = sorted(set(dummies.columns) - set(NIH.columns))
    if unknown:
        raise UserError(
            f"label file {path} has unknown finding labels {', '.join(unknown)}; known: {', '.join(NIH.columns)}"
        )
    vectors = dummies.reindex(columns=list(NIH.columns), fill_value=0).to_numpy(dtype=np.float32, copy=True)
    vectors[:, NIH.index(NO_FINDING)] = (labels == NO_FINDING).to_numpy(dtype=np.float32)
    return LabelTable(
        NIH,
        _object_array(frame["Image Index"]),
        _object_array(frame["View Position"].fillna("UNKNOWN")),
        vectors,
        _object_array(frame["Patient ID"]),
    )


@functools.cache
def _bundled_table(name: str) -> LabelTable:
    path = bundled_csv(name)
    table = _chexpert_table(path) if name == CHEXPERT_BUNDLED else _nih_table(path)
    for array in (table.ids, table.views, table.vectors, table.patients):
        array.setflags(write=False)  # the cached table is shared
    return table


def read_chexpert_table(csv: str | Path | None = None, views: str | Sequence[str] | None = FRONTAL_VIEWS) -> LabelTable:
    """Read a CheXpert label CSV (``None``: torchxrayvision's bundled training file).

    Args:
        csv: path of ``train.csv`` / ``valid.csv``; ``None`` reads the bundled
            training labels (223,414 rows, cached).
        views: keep the rows with these views (default the frontal ``PA`` and
            ``AP``); ``None`` keeps every row.
    """
    views = check_views(views)
    table = _bundled_table(CHEXPERT_BUNDLED) if csv is None else _chexpert_table(Path(csv))
    return table.with_views(views)


def read_nih_table(csv: str | Path | None = None, views: str | Sequence[str] | None = FRONTAL_VIEWS) -> LabelTable:
    """Read an NIH ChestX-ray8/14 ``Data_Entry`` CSV (``None``: the bundled v2020 file, cached).

    ``views`` as in :func:`read_chexpert_table`.
    """
    views = check_views(views)
    table = _bundled_table(NIH_BUNDLED) if csv is None else _nih_table(Path(csv))
    return table.with_views(views)
