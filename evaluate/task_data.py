"""The images of a downstream classification task: training, validation and evaluation sets, and their loaders.

Three disjoint sets of one labelled task (:func:`task_data`):

* **training**: the ``train`` split of ``--data``;
* **validation** (chooses the learning rate and the best epoch): a seeded
  10% of the training split held out from training (:func:`validation_rows`:
  whole patients - or SIIM studies - where the reader knows them, else
  images), or the ``val`` split of a synthetic store;
* **evaluation** (reported, never used for a choice): the held-out split of
  ``--eval-data`` (by default ``--data`` itself) - for phantoms the ``test``
  seed stream, disjoint from the ``train`` one; for real data the official
  validation split (CheXpert, ChestX-ray14's test list) or the reader's
  documented patient- or study-wise held-out split (ISIC-2019, SIIM-COVID);
  for another synthetic store its ``val`` split. A run on a store validates
  on the store's ``val`` split, so it needs ``--eval-data`` (real or phantom
  images, or another store).

Data sets with finding vectors take a label task (``--version`` /
``--setting``); ISIC-2019 and SIIM-COVID bring their own classes.
Training batches come from :class:`plumbing.sampling.ResumableBatchSampler`
(each rank its part of every global batch; resumable at any iteration) or,
for a synthetic store, from :class:`datasets.block_loader.BlockLoader`
(shuffled blocks, the fast path for stores). Evaluation shards are exact
(:func:`plumbing.distributed.shard`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from datasets.block_loader import BlockLoader
from datasets.label_tasks import LabelTask, label_task
from datasets.registry import build_dataset, get_spec
from datasets.synthetic import SyntheticDataset
from plumbing.distributed import local_batch_size, rank, shard, world_size
from plumbing.errors import UserError
from plumbing.sampling import ResumableBatchSampler
from plumbing.seeding import numpy_rng
from plumbing.training import restore

VALIDATION_FRACTION = 0.1
PHANTOM_LENGTHS = (2000, 500)
"""Training and evaluation images of a phantom data set when a command is given no length."""
EVAL_SPLIT = {"phantom": "test", "phantom-nih": "test", "synthetic": "val"}
"""The held-out split per data set (others: ``valid``)."""


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
        spec = get_spec(self.name)
        options: dict[str, Any] = {}
        if self.length is not None:
            if "length" in spec.options:
                options["length"] = self.length
            elif "max_samples" in spec.options:
                options["max_samples"] = self.length
            else:
                raise UserError(f"{self.name} takes no image count (--length / --eval-length)")
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
    records = getattr(dataset, "records", None)
    return None if records is None else records.groups


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


def task_data(train: DataChoice, evaluation: DataChoice, resolution: int, seed: int) -> TaskData:
    """The training, validation and evaluation sets (module docstring); one :class:`UserError` line for a mismatch."""
    classes = task_classes(train)
    if task_classes(evaluation) != classes:
        raise UserError(
            f"--eval-data {evaluation.name} has the classes {', '.join(task_classes(evaluation))}, "
            f"not those of --data {train.name} ({', '.join(classes)})"
        )
    channels = get_spec(train.name).channels
    if get_spec(evaluation.name).channels != channels:
        raise UserError(f"--eval-data {evaluation.name} and --data {train.name} differ in image channels")
    if train.name == evaluation.name == "synthetic" and train.root == evaluation.root:
        raise UserError("the store's val split is the validation set of a run on a synthetic store; pass "
                        "--eval-data (phantom, a real data set or another store) for the evaluation images")
    full = train.build("train", resolution, train.augment)
    if train.name == "synthetic":
        fit, validation = full, train.build("val", resolution, False)
    else:
        held = validation_rows(groups_of(full), len(full), seed)
        if held.all():
            raise UserError(f"--data {train.name} has {len(full)} training images in one group; more are needed")
        plain = full if not train.augment else train.build("train", resolution, False)
        fit, validation = Subset(full, np.flatnonzero(~held).tolist()), Subset(plain, np.flatnonzero(held).tolist())
    held_out = evaluation.build(EVAL_SPLIT.get(evaluation.name, "valid"), resolution, False)
    data = TaskData(classes, channels, fit, validation, held_out, labels_of(fit))
    empty = [name for name, n in data.sizes().items() if n == 0]
    if empty:
        raise UserError(f"the {' and '.join(empty)} set of the task is empty")
    small = [name for name, n in data.sizes().items() if n < world_size()]
    if small:
        raise UserError(f"the {' and '.join(small)} set has fewer images than the {world_size()} processes")
    return data


class StoreBatches:
    """Endless training batches of a store's block loader, resumable at (pass, batch) through ``state_dict``.

    Passes of the block loader may differ by a batch (blocks of unequal size
    land in other streams from pass to pass), so the position is counted as
    batches are taken, not derived from the iteration.
    """

    def __init__(self, loader: BlockLoader) -> None:
        self.loader = loader
        self.position = [0, 0]  # [pass, batches of that pass taken]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, skip = self.position
        while True:
            self.loader.set_epoch(epoch)
            for taken, batch in enumerate(itertools.islice(self.loader, skip, None), start=skip + 1):
                self.position = [epoch, taken]
                yield batch
            epoch, skip = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"position": list(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = [int(v) for v in state["position"]]


def _block_loader(
    dataset: SyntheticDataset, batch_size: int, seed: int, workers: int, device: torch.device | None
) -> BlockLoader:
    return BlockLoader(
        dataset, local_batch_size(batch_size), seed=seed, num_workers=workers, drop_last=True, rank=rank(),
        world_size=world_size(), device=device,
    )


def steps_per_epoch(dataset: Dataset, batch_size: int, workers: int) -> int:
    """Iterations of one epoch of a global batch of ``batch_size``.

    ``ceil(N / batch_size)`` through the resumable sampler; for a synthetic
    store, the full batches of the block loader's first pass with ``workers``
    streams (it drops each stream's last partial batch, so every rank takes
    as many steps).
    """
    if isinstance(dataset, SyntheticDataset):
        steps = len(_block_loader(dataset, batch_size, 0, workers, None))
        if steps == 0:
            raise UserError(f"the store's training split has fewer images than one batch of {batch_size}")
        return steps
    return -(-len(dataset) // batch_size)


def training_batches(
    dataset: Dataset, batch_size: int, seed: int, start: int, workers: int, device: torch.device
) -> Iterable[dict[str, Any]]:
    """An endless stream of this rank's training batches from iteration ``start`` (``batch_size``: the global batch).

    A synthetic store reads through the block loader (:class:`StoreBatches`,
    which resumes from its own ``state_dict`` instead of ``start``), other
    data sets through a ``DataLoader`` over the resumable sampler.
    """
    if isinstance(dataset, SyntheticDataset):
        return StoreBatches(_block_loader(dataset, batch_size, seed, workers, device))
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, start=start, rank=rank(), world_size=world_size())
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def checkpoint_position(
    batches: Iterable[dict[str, Any]], to_save: dict[str, Any], checkpoint: dict[str, Any] | None
) -> None:
    """Checkpoint a store's batch stream with ``to_save`` and put it back where ``checkpoint`` left it.

    A :class:`StoreBatches` stream resumes from its own position (the
    ``DataLoader`` over the resumable sampler resumes from the iteration).
    """
    if isinstance(batches, StoreBatches):
        to_save["batches"] = batches
        if checkpoint is not None:
            restore({"batches": batches}, checkpoint)


def evaluation_batches(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """This rank's exact shard of ``dataset`` (no duplicates) in batches of ``batch_size`` (per rank)."""
    return DataLoader(
        Subset(dataset, list(shard(len(dataset)))), batch_size=batch_size, num_workers=workers,
        pin_memory=device.type == "cuda",
    )
