"""Class-balanced training minibatches (``synth.train --balance-task``), resumable at any batch number.

With ``C`` classes, class ``c`` holding the ``n_c`` images whose label is
``c``, the draws ``p = 0, 1, 2, ...`` come in rounds of ``C``: round
``k = p // C`` draws every class once, in the order of the permutation of the
``C`` classes seeded by ``(seed, "balance-round", k)``; the ``k``-th draw of
class ``c`` is position ``k mod n_c`` of the permutation of its members seeded
by ``(seed, "balance-class", c, k // n_c)`` (one epoch of the class). Batch
``b`` holds draws ``[b B, (b + 1) B)``. Hence:

* every class is drawn equally often: once per round, so a batch of
  ``B = m C`` images holds ``m`` of each class;
* within a class the images come without replacement, epoch after epoch of
  the class: an image of a small class is shown more often than one of a
  large class;
* batch ``b`` is a pure function of ``(seed, b)``, so a run resumed at
  iteration ``t`` starts at batch ``t`` with no saved state, as
  :class:`plumbing.sampling.ResumableBatchSampler` does; rank ``r`` of ``n``
  takes the ``r``-th of ``n`` contiguous parts of every global batch, so any
  number of processes sees the same images.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from plumbing.seeding import generator


class BalancedBatchSampler(Sampler[list[int]]):
    """Endless class-balanced index batches (module docstring), resumable at any batch number.

    Args:
        labels: ``[N]`` class of every image, each in ``[0, num_classes)``.
        num_classes: number of classes; each must have an image.
        batch_size: indices per global batch.
        seed: seed of the class orders and the per-class permutations.
        start: number of the first batch to yield (the engine's iteration on resume).
        rank, world_size: this process's part of each global batch (``batch_size``
            must be a multiple of ``world_size``).
    """

    def __init__(
        self,
        labels: np.ndarray,
        num_classes: int,
        batch_size: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or ((labels < 0) | (labels >= num_classes)).any():
            raise ValueError(f"labels must be a vector of classes in [0, {num_classes})")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError("rank must lie in [0, world_size) and batch_size be a multiple of world_size")
        self.members = [np.flatnonzero(labels == c) for c in range(num_classes)]
        empty = [c for c, m in enumerate(self.members) if len(m) == 0]
        if empty:
            raise ValueError(f"classes {empty} have no image")
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.part = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self._epochs: dict[int, tuple[int, torch.Tensor]] = {}

    def _member(self, c: int, k: int) -> int:
        """The image of the ``k``-th draw of class ``c``."""
        n = len(self.members[c])
        epoch, offset = divmod(k, n)
        cached = self._epochs.get(c)
        if cached is None or cached[0] != epoch:
            cached = (epoch, torch.randperm(n, generator=generator(self.seed, "balance-class", c, epoch)))
            self._epochs[c] = cached
        return int(self.members[c][cached[1][offset]])

    def batch(self, b: int) -> list[int]:
        """The whole global batch ``b`` (every rank's part)."""
        num_classes = len(self.members)
        first, stop = b * self.batch_size, (b + 1) * self.batch_size
        out: list[int] = []
        for k in range(first // num_classes, -(-stop // num_classes)):
            order = torch.randperm(num_classes, generator=generator(self.seed, "balance-round", k)).tolist()
            for r, c in enumerate(order):
                if first <= k * num_classes + r < stop:
                    out.append(self._member(c, k))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start
        while True:
            yield self.batch(b)[self.part]
            b += 1
