"""Training and evaluation batch streams over a data set, the same for every trainer.

* :func:`training_batches`: an endless stream of this rank's part of every
  global batch, resumable at any iteration - a ``DataLoader`` over
  :class:`plumbing.sampling.ResumableBatchSampler`, or for a synthetic store
  its :class:`datasets.block_loader.BlockLoader` (shuffled blocks, the fast
  path for stores) wrapped as :class:`StoreBatches`, which checkpoints its own
  position (:func:`checkpoint_position`);
* :func:`steps_per_epoch`: the iterations of one epoch of either stream;
* :func:`evaluation_batches`: this rank's exact shard of a data set
  (:func:`plumbing.distributed.shard`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from datasets.block_loader import BlockLoader
from datasets.synthetic import SyntheticDataset
from plumbing.distributed import local_batch_size, rank, shard, world_size
from plumbing.errors import UserError
from plumbing.sampling import ResumableBatchSampler
from plumbing.training import restore


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
    return sampled_batches(dataset, sampler, workers, device)


def sampled_batches(dataset: Dataset, sampler: Iterable[list[int]], workers: int, device: torch.device) -> DataLoader:
    """The batches of ``dataset`` that the batch sampler ``sampler`` draws, read by ``workers`` processes (kept
    between passes) and pinned for a CUDA ``device``."""
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
