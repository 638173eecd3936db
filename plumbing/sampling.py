"""A batch sampler whose order is a pure function of (seed, batch number).

Training loops are Ignite engines that may be stopped and resumed at any
iteration. :class:`ResumableBatchSampler` yields an endless stream of index
batches: epoch ``e`` is the permutation drawn from ``(seed, e)`` and batch
``b`` holds positions ``[b * B, (b + 1) * B)`` of the concatenated epochs.
Starting it at ``start`` therefore continues exactly where an uninterrupted
run would be, without saving any random state.
:class:`BalancedBatchSampler` does the same for class-balanced batches: batch
``b`` is drawn from ``(seed, b)`` alone. Under several processes
(:mod:`plumbing.distributed`) rank ``r`` of ``n`` takes the ``r``-th of ``n``
contiguous parts of every global batch, so the ranks together see what one
process sees, whatever the number of processes (also across a resume).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .seeding import generator


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless shuffled index batches, resumable at any batch number.

    Args:
        length: number of samples in the data set.
        batch_size: indices per batch.
        seed: seed of the epoch permutations.
        start: number of the first batch to yield (the engine's iteration on resume).
        rank, world_size: this process's part of each global batch (``batch_size``
            must be a multiple of ``world_size``).
    """

    def __init__(
        self, length: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if length < 1 or batch_size < 1:
            raise ValueError("length and batch_size must be positive")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError("rank must lie in [0, world_size) and batch_size be a multiple of world_size")
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.part = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.length, generator=generator(self.seed, "epoch", epoch))

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start * self.batch_size
        epoch, offset = divmod(position, self.length)
        perm = self._permutation(epoch)
        batch: list[int] = []
        while True:
            take = min(self.batch_size - len(batch), self.length - offset)
            batch.extend(perm[offset : offset + take].tolist())
            offset += take
            if offset == self.length:
                epoch, offset = epoch + 1, 0
                perm = self._permutation(epoch)
            if len(batch) == self.batch_size:
                yield batch[self.part]
                batch = []


class BalancedBatchSampler(Sampler[list[int]]):
    """Endless class-balanced index batches: batch ``b`` is a pure function of ``(seed, b)``.

    Each index of a batch is drawn by choosing a class uniformly among the
    classes that have samples, then a sample of that class uniformly (with
    replacement), so every class is expected to fill an equal share of each
    batch whatever its frequency. ``rank`` / ``world_size`` as
    :class:`ResumableBatchSampler`.
    """

    def __init__(
        self, labels: torch.Tensor, batch_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if len(labels) < 1 or batch_size < 1:
            raise ValueError("labels must be non-empty and batch_size positive")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError("rank must lie in [0, world_size) and batch_size be a multiple of world_size")
        labels = torch.as_tensor(labels, dtype=torch.long)
        order = torch.argsort(labels, stable=True)
        _, counts = torch.unique(labels, return_counts=True)
        self.members = order
        self.offsets = torch.cumsum(counts, 0) - counts
        self.counts = counts
        self.batch_size, self.seed, self.start = batch_size, seed, start
        self.part = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def batch(self, number: int) -> list[int]:
        """The global batch ``number``."""
        g = generator(self.seed, "balanced", number)
        cls = torch.randint(len(self.counts), (self.batch_size,), generator=g)
        within = (torch.rand(self.batch_size, generator=g, dtype=torch.float64) * self.counts[cls]).long()
        return self.members[self.offsets[cls] + within].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        number = self.start
        while True:
            yield self.batch(number)[self.part]
            number += 1
