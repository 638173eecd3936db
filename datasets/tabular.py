"""The common shape of the real-data readers: a table of records, a loader and a transform.

A reader parses its label files into :class:`Records` (image path, id, class
label, optional finding vector per row) and wraps them in a
:class:`RecordDataset`, which decodes the image
(:func:`datasets.transforms.load_transform`), applies
:func:`datasets.transforms.compose` and returns a sample dict of
:mod:`datasets.sample`.

Policies shared by the readers:

* **Label task** (:func:`apply_task`): rows whose class under the task is -1
  are dropped and ``label`` is the class index; without a task the label is
  -1 (finding data sets) or the data set's own class.
* **Subset** (:func:`subset_rows`): ``max_samples`` keeps a seeded uniform
  random subset of the rows, in their original order, so the same arguments
  always give the same images.
* **Held-out split** (:func:`stratified_holdout`): per class ``c`` with
  ``n_c`` members, ``round(fraction * n_c)`` members drawn by a seeded
  permutation are held out. For ISIC 2019 with fraction 0.2 this gives
  20,264 training and 5,067 held-out images.
* **Unreadable images** (``on_error``): ``"raise"`` (default) raises the
  :class:`~datasets.image_io.ImageDecodeError` that names the file (a
  :class:`~plumbing.errors.UserError`: one line at the command level). ``"skip"``
  logs a warning once per bad file, records it in ``RecordDataset.skipped`` (per
  process: each ``DataLoader`` worker keeps its own set, so the logged
  warnings are the complete record) and returns the next readable sample
  (index ``i + 1``, ``i + 2``, ... cyclically), so a batch keeps its size;
  it raises only when no file is readable. A
  :class:`~datasets.image_io.MissingDecoderError` (the installation cannot
  decode a format) is always raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from plumbing.errors import OPTION, DataRoleError, UserError

from .findings import FindingSchema
from .image_io import ImageDecodeError
from .label_tables import LabelTable, check_views
from .label_tasks import LabelTask, assign_classes
from .options import choice, fraction, integer
from .sample import FINDINGS, ID, IMAGE, LABEL, Sample
from .transforms import compose, load_transform

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class NoLabelsError(UserError):
    """A use that needs labelled images met a data set that has none (a ``folder`` without ``labels.csv``,
    or none of whose images has a class of the task); an adaptation target may go without."""


@dataclass(frozen=True, eq=False)
class Records:
    """One row per image.

    Attributes:
        paths: ``[N]`` object array of image file paths (str).
        ids: ``[N]`` object array of sample ids.
        labels: ``[N]`` int64 class indices (-1 = no class).
        findings: ``[N, K]`` float32 finding vectors, or ``None``.
        groups: ``[N]`` object array of the patient (or study) of each image, where the data set knows it,
            else ``None``; splits of the images keep a group on one side.
    """

    paths: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    findings: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        if len(self.ids) != n or len(self.labels) != n or any(
            a is not None and len(a) != n for a in (self.findings, self.groups)
        ):
            raise ValueError("paths, ids, labels, findings and groups must have the same length")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: np.ndarray) -> Records:
        """The records at ``rows`` (a boolean mask or integer indices)."""
        return Records(
            paths=self.paths[rows],
            ids=self.ids[rows],
            labels=self.labels[rows],
            findings=None if self.findings is None else self.findings[rows],
            groups=None if self.groups is None else self.groups[rows],
        )


def table_records(paths: np.ndarray, table: LabelTable, task: LabelTask | None) -> Records:
    """Records of a label table's rows (image paths given), filtered and labelled by ``task``."""
    records = Records(
        paths=paths,
        ids=table.ids,
        labels=np.full(len(table), -1, dtype=np.int64),
        findings=table.vectors,
        groups=table.patients,
    )
    return apply_task(records, table.schema, task)


def apply_task(records: Records, schema: FindingSchema, task: LabelTask | None) -> Records:
    """Keep the rows the task assigns a class and set ``labels``; ``None`` leaves the records as they are."""
    if task is None:
        return records
    if records.findings is None:
        raise ValueError("a label task needs finding vectors")
    classes = assign_classes(records.findings, schema, task)
    keep = classes >= 0
    kept = records.subset(keep)
    return Records(kept.paths, kept.ids, classes[keep].astype(np.int64), kept.findings, kept.groups)


def subset_rows(n: int, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded uniform subset of ``min(n, max_samples)`` rows (all rows for ``None``)."""
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    if max_samples < 1:
        raise UserError(f"max_samples must be at least 1, not {max_samples}")
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def stratified_holdout(classes: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean ``[N]`` mask of the held-out rows: ``round(fraction * n_c)`` random members of each class ``c``."""
    classes = np.asarray(classes)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(classes), dtype=bool)
    for c in np.unique(classes):  # one draw per class (a handful of classes)
        members = np.flatnonzero(classes == c)
        count = int(round(fraction * len(members)))
        held[rng.permutation(members)[:count]] = True
    return held


def split_name(name: str, spec_name: str, splits: dict[str, str]) -> str:
    """The canonical split for ``name`` (aliases allowed); a :class:`UserError` lists the known ones."""
    try:
        return splits[name]
    except KeyError:
        raise UserError(f"{spec_name} has no split {name!r}; use one of {', '.join(splits)}") from None


class RecordDataset(Dataset):
    """Samples of :class:`Records`: decode, resize / augment, and attach the labels.

    Args:
        records: the rows.
        channels: image channels (1 or 3).
        resolution: square output size.
        augment: apply :func:`datasets.transforms.train_augment`.
        on_error: ``"raise"`` or ``"skip"`` for unreadable images (module docstring).
        seed: seed of the augmentation generators (``None``: MONAI's default state).
    """

    def __init__(
        self,
        records: Records,
        *,
        channels: int,
        resolution: int,
        augment: bool = False,
        on_error: str = "raise",
        seed: int | None = None,
    ):
        if on_error not in ON_ERROR:
            raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
        if len(records) == 0:
            raise UserError("the data set has no images for these options (split, views, label task)")
        self.records = records
        self.channels = channels
        self.resolution = resolution
        self.on_error = on_error
        self.load = load_transform(IMAGE, channels)
        self.transform = compose(channels, resolution, augment=augment, seed=seed)
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """``[N]`` int64 class indices of every sample (no image decoding)."""
        return self.records.labels

    def __getitem__(self, index: int) -> Sample:
        n = len(self.records)
        for step in range(n):
            i = (int(index) + step) % n
            try:
                return self._sample(i)
            except ImageDecodeError as exc:
                if self.on_error == "raise":
                    raise
                path = str(self.records.paths[i])
                if path not in self.skipped:
                    self.skipped.add(path)
                    log.warning("skipping unreadable image (%d so far): %s", len(self.skipped), exc)
        raise UserError(f"none of the {n} images of the data set could be read (first: {self.records.paths[0]})")

    def _sample(self, i: int) -> Sample:
        r = self.records
        data = self.load({IMAGE: Path(r.paths[i])})
        sample = dict(self.transform(data))
        sample[LABEL] = int(r.labels[i])
        sample[ID] = str(r.ids[i])
        if r.findings is not None:
            sample[FINDINGS] = torch.from_numpy(np.array(r.findings[i], dtype=np.float32))
        return sample  # type: ignore[return-value]


@dataclass(frozen=True)
class ReaderOptions:
    """Options the real-data readers accept (``build_dataset(..., **options)``).

    Attributes:
        views: view positions kept (CheXpert, ChestX-ray8 only; a string is
            one view, :func:`datasets.label_tables.check_views`); ``None`` keeps all.
        max_samples: keep a seeded subset of at most this many images.
        seed: seed of the subset, of the held-out split and of the augmentations.
        on_error: ``"raise"`` or ``"skip"`` for unreadable images.
        holdout: fraction held out for ``valid`` where the data set has no
            published split (ISIC 2019 and SIIM-COVID only).
    """

    views: str | Sequence[str] | None = ("PA", "AP")
    max_samples: int | None = None
    seed: int = 0
    on_error: str = "raise"
    holdout: float = 0.2


def reader_options(spec_name: str, options: dict[str, Any]) -> ReaderOptions:
    """Parse and check ``**options`` (the spec checks their names: :meth:`datasets.spec.DataSetSpec.check_options`).

    A bad value is a one-line :class:`UserError` saying what was expected.
    """
    parsed = ReaderOptions(**options)
    try:
        views = check_views(parsed.views)
    except UserError as exc:
        raise UserError(f"{spec_name}: {exc}") from None
    max_samples = parsed.max_samples
    if max_samples is not None:
        max_samples = integer(spec_name, "max_samples", max_samples, minimum=1)
    return ReaderOptions(
        views=views,
        max_samples=max_samples,
        seed=integer(spec_name, "seed", parsed.seed, minimum=0),
        on_error=choice(spec_name, "on_error", parsed.on_error, ON_ERROR),
        holdout=fraction(spec_name, "holdout", parsed.holdout, closed=False),
    )


def make_dataset(
    records: Records,
    opts: ReaderOptions,
    *,
    channels: int,
    resolution: int,
    augment: bool,
) -> RecordDataset:
    """Apply ``max_samples`` and build the :class:`RecordDataset`."""
    records = records.subset(subset_rows(len(records), opts.max_samples, opts.seed))
    return RecordDataset(
        records, channels=channels, resolution=resolution, augment=augment, on_error=opts.on_error, seed=opts.seed
    )


def layout_error(spec_name: str, env_var: str, layout: str, problem: str) -> UserError:
    """A one-line error about a data root: the problem, the expected layout, the flag and the variable."""
    return DataRoleError(f"{spec_name}: {problem}; expected the layout {layout} ({OPTION} or {env_var})")


def require_file(root: Path, name: str, spec_name: str, env_var: str, layout: str) -> Path:
    """``root / name``, or a :func:`layout_error` when it is not a file."""
    path = root / name
    if not path.is_file():
        raise layout_error(spec_name, env_var, layout, f"{path} does not exist")
    return path


def read_layout_csv(path: Path, columns: Sequence[str], spec_name: str, env_var: str, layout: str) -> pd.DataFrame:
    """A data set's CSV; an unreadable file or a missing column is a :func:`layout_error`."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise layout_error(spec_name, env_var, layout, f"{path} could not be read ({reason})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise layout_error(spec_name, env_var, layout, f"{path} lacks the columns {', '.join(missing)}")
    return frame


def onehot_matrix(
    frame: pd.DataFrame, columns: Sequence[str], path: Path, spec_name: str, env_var: str, layout: str
) -> np.ndarray:
    """``float64 [N, len(columns)]`` of a CSV's one-hot columns (blank = nan).

    A value that is not a number is a :func:`layout_error` naming its column.
    """
    values = frame[list(columns)]
    numbers = values.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.to_numpy().any():
        column = next(c for c in columns if bad[c].any())
        value = values[column][bad[column]].iloc[0]
        raise layout_error(
            spec_name, env_var, layout, f"{path} column {column} holds {value!r}; expected one-hot values 0 or 1"
        )
    return numbers.to_numpy(dtype=np.float64)
