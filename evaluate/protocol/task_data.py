"""The images of a downstream classification task: training, validation and evaluation sets, and their loaders.

Three disjoint sets of one labelled task (:func:`task_data`):

* **training**: the ``train`` split of ``--data``;
* **validation** (chooses the learning rate and the best epoch): a seeded
  10% of the training split held out from training (:func:`validation_rows`:
  whole patients - or SIIM studies - where the reader knows them, else
  images), or the data set's own validation split where its spec names one
  (:attr:`~datasets.spec.DataSetSpec.validation_split`: a synthetic store's ``val``);
* **evaluation** (reported, never used for a choice): the held-out split of
  ``--eval-data`` (by default ``--data`` itself; its spec's
  :attr:`~datasets.spec.DataSetSpec.eval_split`) - for phantoms the ``test``
  seed stream, disjoint from the ``train`` one; for real data the official
  validation split (CheXpert, ChestX-ray14's test list) or the reader's
  documented patient- or study-wise held-out split (ISIC-2019, SIIM-COVID);
  for another synthetic store its ``val`` split. A run on a store validates
  on the store's ``val`` split, so it needs ``--eval-data`` (real or phantom
  images, or another store).

Every set keeps the images that have a class (:func:`labelled`): a
``folder`` of one's own images also holds unlabelled ones, which serve
adaptation and pretext training only; a set left without any is a
:class:`~datasets.tabular.NoLabelsError`.

Data sets with finding vectors take a label task (``--version`` /
``--setting``); ISIC-2019 and SIIM-COVID bring their own classes.
Training batches come from :class:`plumbing.sampling.ResumableBatchSampler`
(each rank its part of every global batch; resumable at any iteration) or,
for a synthetic store, from :class:`datasets.block_loader.BlockLoader`
(shuffled blocks, the fast path for stores). Evaluation shards are exact
(:func:`plumbing.distributed.shard`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from datasets.label_tasks import LabelTask, label_task
from datasets.registry import build_dataset, get_spec
from datasets.tabular import NoLabelsError
from plumbing.distributed import world_size
from plumbing.errors import OPTION, DataRoleError, UserError
from plumbing.seeding import numpy_rng

VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class DataChoice:
    """Which images: a registered data set, its root, a label task and how many images."""

    name: str
    root: str | None
    version: int | None
    setting: str | None
    length: int | None
    augment: bool = False

    def task(self) -> LabelTask | None:
        spec = get_spec(self.name)
        if spec.schema is None:
            return None
        if self.version is None or self.setting is None:
            raise UserError(f"{self.name} has finding vectors: pass --version and --setting to choose the label task")
        return label_task(self.version, self.setting)

    def build(self, split: str, resolution: int, augment: bool) -> Dataset:
        """``split`` with ``length`` images (:meth:`~datasets.spec.DataSetSpec.count_options`: a data set that
        cannot be cut is a :class:`UserError` when a length is given)."""
        options = get_spec(self.name).count_options(self.length)
        return build_dataset(
            self.name, root=self.root, split=split, task=self.task(), resolution=resolution, augment=augment, **options
        )


@dataclass
class TaskData:
    classes: tuple[str, ...]
    channels: int
    train: Dataset
    validation: Dataset
    evaluation: Dataset
    train_labels: torch.Tensor

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "evaluation": len(self.evaluation)}


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The class of every sample, without reading images (the readers' ``labels``)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"{type(dataset).__name__} exposes no labels")
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


def task_classes(choice: DataChoice) -> tuple[str, ...]:
    task = choice.task()
    if task is not None:
        return task.classes
    classes = get_spec(choice.name).classes
    if classes is None:
        raise UserError(f"{choice.name} has no classes")
    return tuple(classes)


def groups_of(dataset: Dataset) -> np.ndarray | None:
    """The patient (or study) of every image where the reader knows it (:class:`datasets.tabular.Records`)."""
    if isinstance(dataset, Subset):
        groups = groups_of(dataset.dataset)
        return None if groups is None else groups[np.asarray(dataset.indices, dtype=np.int64)]
    records = getattr(dataset, "records", None)
    return None if records is None else records.groups


def labelled(dataset: Dataset, choice: DataChoice, role: str) -> Dataset:
    """The images of ``dataset`` that have a class (label >= 0): ``dataset`` itself when all have one.

    Readers of published data sets return only such images under a label
    task; a ``folder`` also keeps its unlabelled ones (label -1). A
    :class:`~datasets.tabular.NoLabelsError` naming the data set and ``role``
    (``training``, ``validation``, ``evaluation``) when none has a class.
    """
    keep = labels_of(dataset).numpy() >= 0
    if keep.all():
        return dataset
    if not keep.any():
        spec = get_spec(choice.name)
        where = choice.name if choice.root is None else f"{choice.name} {choice.root}"
        raise NoLabelsError(f"{where}: none of its {len(keep)} images for the {role} set has a label of the task "
                            f"({', '.join(task_classes(choice))}); labelled images are needed (layout: {spec.layout})")
    return Subset(dataset, np.flatnonzero(keep).tolist())


def validation_rows(groups: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """Boolean ``[n]``: the seeded ``VALIDATION_FRACTION`` of the images held out for validation (at least one).

    With ``groups`` whole groups are held out - in a seeded order, until they
    hold the fraction - so no patient has images on both sides; else images.
    """
    want = max(1, round(VALIDATION_FRACTION * n))
    if groups is None:
        held = np.zeros(n, dtype=bool)
        held[numpy_rng(seed, "validation").permutation(n)[:want]] = True
        return held
    _, first, codes = np.unique(groups, return_index=True, return_inverse=True)
    ranked = numpy_rng(seed, "validation groups").permutation(len(first))
    sizes = np.bincount(codes, minlength=len(first))[ranked]
    chosen = ranked[: int(np.searchsorted(np.cumsum(sizes), want)) + 1]
    return np.isin(codes, chosen)


def training_sets(train: DataChoice, resolution: int, seed: int) -> tuple[Dataset, Dataset]:
    """The labelled training and validation sets of ``train`` (module docstring); errors name the ``train`` role."""
    spec = get_spec(train.name)
    try:
        full = labelled(train.build("train", resolution, train.augment), train, "training")
        if spec.validation_split is not None:
            return full, labelled(train.build(spec.validation_split, resolution, False), train, "validation")
        held = validation_rows(groups_of(full), len(full), seed)
        if held.all():
            raise UserError(f"--data {train.name} has {len(full)} training images in one "
                            f"{spec.groups or 'group'}; more are needed")
        plain = full if not train.augment else labelled(train.build("train", resolution, False), train, "training")
        return Subset(full, np.flatnonzero(~held).tolist()), Subset(plain, np.flatnonzero(held).tolist())
    except DataRoleError as exc:
        raise exc.in_role("train") from None


def evaluation_set(evaluation: DataChoice, resolution: int) -> Dataset:
    """The labelled held-out split of ``evaluation`` (its spec's ``eval_split``); a
    :class:`~datasets.tabular.NoLabelsError` when none of its images has a label; errors name the ``evaluation``
    role."""
    try:
        return labelled(evaluation.build(get_spec(evaluation.name).eval_split, resolution, False), evaluation,
                        "evaluation")
    except DataRoleError as exc:
        raise exc.in_role("evaluation") from None


def task_data(train: DataChoice, evaluation: DataChoice, resolution: int, seed: int) -> TaskData:
    """The training, validation and evaluation sets (module docstring); one :class:`UserError` line for a mismatch."""
    classes, evaluation_classes = task_classes(train), task_classes(evaluation)
    if evaluation_classes != classes:
        raise UserError(
            f"the evaluation data set {evaluation.name} has the classes {', '.join(evaluation_classes)}, "
            f"not those of the training data set {train.name} ({', '.join(classes)})"
        )
    spec = get_spec(train.name)
    channels = spec.channels
    if get_spec(evaluation.name).channels != channels:
        raise UserError(f"the evaluation data set {evaluation.name} and the training data set {train.name} differ in "
                        "image channels")
    same = (train.name, train.root) == (evaluation.name, evaluation.root)
    if same and spec.validation_split is not None and spec.validation_split == get_spec(evaluation.name).eval_split:
        raise DataRoleError(f"the {spec.validation_split} split of {train.name} is the validation set of a run on it; "
                            f"pass {OPTION} (phantom, a real data set or another store) for the evaluation images",
                            "evaluation_data")
    fit, validation = training_sets(train, resolution, seed)
    held_out = evaluation_set(evaluation, resolution)
    data = TaskData(classes, channels, fit, validation, held_out, labels_of(fit))
    empty = [name for name, n in data.sizes().items() if n == 0]
    if empty:
        raise UserError(f"the {' and '.join(empty)} set of the task is empty")
    small = [name for name, n in data.sizes().items() if n < world_size()]
    if small:
        raise UserError(f"the {' and '.join(small)} set has fewer images than the {world_size()} processes")
    return data
