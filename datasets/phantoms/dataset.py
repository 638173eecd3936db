"""Phantom chest radiographs: the embedded data sets ``phantom`` and ``phantom-nih`` (no files needed).

Every sample is drawn by the procedural renderer :mod:`datasets.phantoms`
from a real finding vector and its own seed:

* the finding vector is a row of a real label table: CheXpert frontal rows
  (:func:`~datasets.label_tables.read_chexpert_table`) for ``phantom``, NIH
  ChestX-ray14 frontal rows (:func:`~datasets.label_tables.read_nih_table`)
  for ``phantom-nih``, so findings co-occur as they do in the real data;
* sample ``i`` of a data set built with ``seed`` and ``split`` has the seed
  ``s_i = derive_seed(seed, name, split, i)`` (:func:`plumbing.seeding.derive_seed`);
  its row is ``derive_seed(s_i, "row")`` modulo the number of eligible rows,
  and the renderer draws everything else from ``s_i``. The same arguments
  therefore always give the same images; ``train``, ``valid`` (alias
  ``val``) and ``test`` are three disjoint seed streams;
* with a label task only rows of a class (``assign_classes >= 0``) are
  eligible and ``label`` is the class; ``balanced=True`` first draws the
  class uniformly (``derive_seed(s_i, "class")`` modulo the number of
  classes), then a row of that class. Without a task ``label`` is -1;
* uncertain (-1) labels are shown with probability 0.5, decided by the
  sample's seed (``findings`` keeps the raw -1);
* ``shortcut = p`` adds a mark outside the lungs that agrees with the
  target with probability p: the target is the class with a task, else 1
  when any finding is positive. A target ``t`` of ``n`` values becomes the
  mark ``t`` (0: no mark; ``k``: a bright square in slot ``k`` at the
  bottom of the image) with probability p, otherwise one of the other
  ``n - 1`` values uniformly (``p = 1/n`` makes the mark uninformative);
* ``augment=True`` applies :func:`datasets.transforms.train_augment` (via
  :func:`datasets.transforms.compose`) to image and mask.

Samples follow :mod:`datasets.sample` (``image``, ``mask``, ``findings``,
``label``, ``id``). ``__getitems__`` renders a list of indices in one batched
call (``torch.utils.data.DataLoader`` uses it for batched fetching).

The labelled picture grid command is :mod:`datasets.phantom_grid`
(``python -m datasets.phantom_grid --n 64 --out grid.png``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from plumbing.errors import UserError
from plumbing.seeding import derive_seed, uniform

from ..findings import FindingSchema
from ..label_tables import LabelTable, read_chexpert_table, read_nih_table
from ..label_tasks import LabelTask, assign_classes
from ..options import flag, fraction, integer
from ..sample import FINDINGS, ID, IMAGE, LABEL, MASK, Sample
from ..spec import DataSetSpec
from .render import DOMAIN_SCHEMAS, check_domain, check_resolution, render_batch

SPLITS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
OPTIONS = ("length", "seed", "shortcut", "balanced")  # the reader options of the registered phantom sets
LAYOUT = "none: rendered procedurally, no files needed"
LENGTHS = (2000, 500)
"""Training and evaluation images of a phantom data set when a command is given no count."""


class PhantomDataset(Dataset):
    """Phantom radiographs of one domain, split and seed (see the module docstring).

    Args:
        domain: ``phantom`` (CheXpert-like) or ``phantom-nih`` (NIH-like).
        split: ``train``, ``valid`` / ``val`` or ``test``.
        task: a label task, or ``None``.
        resolution: image side, 32 to 512 px.
        augment: apply the shared training augmentations.
        length: number of samples.
        seed: data-set seed.
        shortcut: probability that the shortcut mark agrees with the target; ``None`` for no mark.
        balanced: draw the task's classes uniformly (needs a task).
        table: the label table to sample from (default: the spec's label table, its bundled file).
    """

    def __init__(
        self,
        domain: str = "phantom",
        split: str = "train",
        task: LabelTask | None = None,
        resolution: int = 256,
        augment: bool = False,
        length: int = LENGTHS[0],
        seed: int = 0,
        shortcut: float | None = None,
        balanced: bool = False,
        table: LabelTable | None = None,
    ) -> None:
        self.domain = check_domain(domain)
        if split not in SPLITS:
            raise UserError(f"{domain} has no split {split!r}; use one of {', '.join(SPLITS)}")
        self.split = SPLITS[split]
        self.resolution = check_resolution(resolution)
        self.length = integer(domain, "length", length, minimum=1)
        self.seed = integer(domain, "seed", seed)
        self.shortcut = None if shortcut is None else fraction(domain, "shortcut", shortcut, closed=True)
        self.balanced = flag(domain, "balanced", balanced)
        if self.balanced and task is None:
            raise UserError(f"{domain}: balanced=True draws the classes of a label task; give a task")
        self.schema: FindingSchema = DOMAIN_SCHEMAS[domain]
        self.task = task
        table = SPECS[domain].read_label_table() if table is None else table
        if table.schema != self.schema:
            raise ValueError(f"{domain} samples {self.schema.name} finding vectors, not {table.schema.name}")
        self.vectors = table.vectors
        if task is None:
            self.classes = np.full(len(table), -1, dtype=np.int64)
            self.pools = [np.arange(len(table))]
        else:
            self.classes = assign_classes(table.vectors, self.schema, task)
            if self.balanced:
                self.pools = [np.flatnonzero(self.classes == c) for c in range(len(task.classes))]
            else:
                self.pools = [np.flatnonzero(self.classes >= 0)]
            empty = [
                task.classes[c] if self.balanced else task.name for c, pool in enumerate(self.pools) if len(pool) == 0
            ]
            if empty:
                raise UserError(f"{domain}: no {self.schema.name} label row belongs to {', '.join(empty)}")
        self.transform = None
        if augment:
            from ..transforms import compose

            self.transform = compose(1, self.resolution, augment=True, seed=self.seed)

    def __len__(self) -> int:
        return self.length

    def sample_seed(self, index: int) -> int:
        """The render seed of sample ``index``."""
        return derive_seed(self.seed, self.domain, self.split, index)

    def row(self, index: int) -> int:
        """The label-table row sample ``index`` shows."""
        s = self.sample_seed(index)
        pool = self.pools[derive_seed(s, "class") % len(self.pools)] if self.balanced else self.pools[0]
        return int(pool[derive_seed(s, "row") % len(pool)])

    @property
    def labels(self) -> np.ndarray:
        """The class of every sample (-1 without a task), read from the label table without rendering."""
        return np.array([self.classes[self.row(i)] for i in range(self.length)], dtype=np.int64)

    def mark(self, index: int, row: int) -> int:
        """The shortcut-mark value of sample ``index`` (0 when there is no shortcut)."""
        if self.shortcut is None:
            return 0
        if self.task is not None:
            target, values = int(self.classes[row]), len(self.task.classes)
        else:
            findings = self.vectors[row, self.schema.finding_indices]
            target, values = int(np.any(findings == 1)), 2
        s = self.sample_seed(index)
        if uniform(s, "shortcut") < self.shortcut:
            return target
        return (target + 1 + derive_seed(s, "shortcut-other") % (values - 1)) % values

    def _index(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return i

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """Samples ``indices``, rendered in one batched call."""
        idx = [self._index(i) for i in indices]
        rows = [self.row(i) for i in idx]
        seeds = [self.sample_seed(i) for i in idx]
        marks = [self.mark(i, r) for i, r in zip(idx, rows, strict=True)]
        vectors = self.vectors[rows]
        images, masks = render_batch(
            vectors, seeds, self.resolution, self.domain, marks=marks if self.shortcut is not None else None
        )
        findings = torch.from_numpy(np.array(vectors, dtype=np.float32))
        samples: list[Sample] = []
        for k, i in enumerate(idx):
            sample: Sample = {
                IMAGE: images[k],
                MASK: masks[k],
                FINDINGS: findings[k],
                LABEL: int(self.classes[rows[k]]),
                ID: f"{self.domain}/{self.split}/{self.seed}/{i}",
            }
            if self.transform is not None:
                sample = {**sample, **self.transform({IMAGE: sample[IMAGE], MASK: sample[MASK]})}
            samples.append(sample)
        return samples


def phantom_factory(
    root: Path | None,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    length: int = LENGTHS[0],
    seed: int = 0,
    shortcut: float | None = None,
    balanced: bool = False,
    *,
    domain: str,
) -> PhantomDataset:
    """Registry factory of the phantom data sets (``root`` is unused)."""
    del root
    return PhantomDataset(domain, split, task, resolution, augment, length, seed, shortcut, balanced)


def _spec(name: str, description: str, label_table: Callable[..., LabelTable]) -> DataSetSpec:
    return DataSetSpec(
        name=name,
        description=description,
        layout=LAYOUT,
        env_var=None,
        channels=1,
        schema=DOMAIN_SCHEMAS[name],
        classes=None,
        factory=functools.partial(phantom_factory, domain=name),
        options=OPTIONS,
        eval_split="test",
        lengths=LENGTHS,
        label_table=label_table,
    )


SPECS: dict[str, DataSetSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "phantom",
            "procedural CheXpert-like phantom radiographs (real lung masks, CheXpert label co-occurrence)",
            read_chexpert_table,
        ),
        _spec(
            "phantom-nih",
            "procedural NIH-like phantom radiographs (real lung masks, ChestX-ray14 label co-occurrence)",
            read_nih_table,
        ),
    )
}
"""The phantom data sets; each samples its findings from its spec's label table."""
