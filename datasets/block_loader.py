"""Fast epoch reading of array-backed data sets: shuffled contiguous blocks plus a shuffle buffer.

Chunked stores pay a fixed cost per chunk read, so reading images one by one
in random order is slower than reading PNG files (``bench.read_store``, 4096
noisy 64 px images: 292-425 images/s by random access against 2.7-7.8k for PNG
files through a DataLoader with 2 workers). This module
reads *units* of ``read_size`` contiguous rows aligned to the source's chunks
(by default one stored block, i.e. one shard object), in an order shuffled per
epoch, and mixes them in a buffer (the quasi-random order FFCV and WebDataset
use):

1. Rows ``0..N-1`` are cut into units ``[u * read_size, (u + 1) * read_size)``.
2. Per epoch the units are permuted by ``numpy_rng(seed, "block-order", epoch)`` (:mod:`plumbing.seeding`); with
   ``world_size > 1`` the short tail unit is dropped and the permuted units
   are dealt round-robin to the ranks, each keeping the same count (so every
   rank yields the same number of batches; up to ``world_size`` units are
   left out each epoch, different ones every epoch).
3. A rank's units are grouped into *windows* of ``buffer_size / read_size``
   consecutive units; with W DataLoader workers, worker ``w`` takes windows
   ``w, w + W, ...`` (one *stream* per worker, or one in process).
4. A stream reads its next window in a background thread while it emits the
   current one: the rows of the window plus those carried over from the
   previous window are permuted by ``numpy_rng(seed, "window", epoch, rank, window)``; full
   batches are emitted and the remainder is carried over; the stream's last
   partial batch is emitted unless ``drop_last``.

Each epoch visits every row exactly once (``world_size = 1``), and the order is
a function of ``(seed, epoch, rank, world_size, num_workers)`` only.

Two levels:

* :class:`BlockStream`, an ``IterableDataset`` yielding *raw* batches
  ``(rows, indices)``: the stored rows (e.g. uint8 images) and their row
  numbers, so DataLoader workers ship compact uint8 data between processes.
* :class:`BlockLoader`, the training loader: iterates a stream in process
  (``num_workers = 0``, one read-ahead thread; usually the fastest:
  ``bench.read_store`` at 64 px reads 41-52k images/s in process against 8k
  with 2 DataLoader workers on 2 cores) or through a DataLoader with
  workers, and turns each raw batch into a batched sample dict (as
  ``default_collate`` would make it: ``image`` [B, C, H, W] float32,
  ``label`` [B], ``findings`` [B, K], ``id`` list of str) in two steps of the source: ``collate`` (the stored uint8
  rows as tensors) and ``finish`` (float conversion, resizing, augmentation,
  on whatever device the batch is on). A producer thread works ``prefetch``
  batches ahead of the consumer. For a CPU consumer it runs both steps; for
  a GPU it collates and pins, and the consumer's thread copies the uint8
  batch to the GPU (a quarter of the bytes of float32) and finishes it
  there, so the host does no per-pixel work beyond decoding. Call
  :meth:`BlockLoader.set_epoch` before each epoch, as with
  ``DistributedSampler``.

A *source* is any map-style data set with the :class:`BlockSource` members
(``datasets.synthetic.SyntheticDataset`` is one). An exception the source
raises while reading (a damaged block of a synthetic store is a one-line
:class:`plumbing.errors.UserError`) reaches the consumer at the batch it
belongs to; from DataLoader workers the DataLoader re-raises it with the
worker's traceback appended to the message, and ``plumbing.cli.run_cli``
prints the original line.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from plumbing.prefetch import prefetch_in_thread
from plumbing.seeding import generator as seeded_generator
from plumbing.seeding import numpy_rng


@runtime_checkable
class BlockSource(Protocol):
    """What :class:`BlockStream` and :class:`BlockLoader` need from a data set."""

    def __len__(self) -> int: ...

    @property
    def chunk_length(self) -> int:
        """Rows per stored chunk; reads are aligned to it."""
        ...

    @property
    def block_length(self) -> int:
        """Rows per stored block (one object, e.g. a shard): the default read size."""
        ...

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """The stored rows ``[start, stop)`` (e.g. uint8 images ``[n, C, H, W]``)."""
        ...

    def collate(self, rows: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
        """A batch of stored rows and their row indices, as CPU tensors (the images still as stored)."""
        ...

    def finish(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """The training batch from a collated one, on the batch's device; ``generator`` drives augmentation."""
        ...


def epoch_windows(
    n: int, read_size: int, window_units: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """Unit numbers of each window of ``rank`` in ``epoch`` (steps 1-3 of the module docstring).

    Unit ``u`` covers rows ``[u * read_size, min((u + 1) * read_size, n))``.
    """
    n_units = -(-n // read_size)
    order = numpy_rng(seed, "block-order", epoch).permutation(n_units)
    if world_size > 1:
        if n % read_size:
            order = order[order != n_units - 1]
        per_rank = len(order) // world_size
        order = order[rank::world_size][:per_rank]
    return [order[i : i + window_units] for i in range(0, len(order), window_units)]


class BlockStream(IterableDataset):
    """Raw batches ``(rows, indices)`` of a :class:`BlockSource` in shuffled block order.

    Args:
        source: the data set.
        batch_size: rows per batch.
        seed: base seed of every permutation.
        read_size: rows per read, rounded up to a multiple of the chunk length
            (default: the source's block length).
        buffer_size: rows per shuffle window, rounded to whole reads (default
            4 reads). Memory: two windows of stored rows per stream (the
            current one and the one read ahead).
        drop_last: drop each stream's final partial batch.
        rank, world_size: this process's share in distributed training.
    """

    def __init__(
        self,
        source: BlockSource,
        batch_size: int,
        *,
        seed: int = 0,
        read_size: int | None = None,
        buffer_size: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.source = source
        self.batch_size = int(batch_size)
        chunk = int(source.chunk_length)
        want = read_size if read_size is not None else source.block_length
        self.read_size = max(1, -(-int(want) // chunk)) * chunk
        buffer = buffer_size if buffer_size is not None else 4 * self.read_size
        self.window_units = max(1, round(buffer / self.read_size))
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows."""
        self.epoch = int(epoch)

    def _unit_rows(self, unit: int) -> tuple[int, int]:
        start = int(unit) * self.read_size
        return start, min(start + self.read_size, len(self.source))

    def stream_windows(self, stream: int, streams: int, epoch: int | None = None) -> list[tuple[int, np.ndarray]]:
        """``(window number, unit numbers)`` of stream ``stream`` of ``streams`` in ``epoch`` (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        windows = epoch_windows(
            len(self.source), self.read_size, self.window_units, self.seed, epoch, self.rank, self.world_size
        )
        return [(w, units) for w, units in enumerate(windows) if w % streams == stream]

    def num_batches(self, streams: int = 1) -> int:
        """Batches this epoch when ``streams`` streams (DataLoader workers, or 1) share it."""
        total = 0
        streams = max(1, streams)
        for s in range(streams):
            rows = sum(e - b for _, units in self.stream_windows(s, streams) for b, e in map(self._unit_rows, units))
            total += rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
        return total

    def _read_window(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spans = [self._unit_rows(u) for u in units]
        rows = np.concatenate([self.source.read_rows(s, e) for s, e in spans])
        indices = np.concatenate([np.arange(s, e, dtype=np.int64) for s, e in spans])
        return rows, indices

    def batches(
        self, stream: int = 0, streams: int = 1, epoch: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The raw batches of one stream in ``epoch`` (default: the current one; step 4 of the module docstring)."""
        epoch = self.epoch if epoch is None else epoch  # fixed for the whole pass
        windows = self.stream_windows(stream, streams, epoch)
        if not windows:
            return
        carry_rows: np.ndarray | None = None
        carry_idx = np.zeros(0, dtype=np.int64)
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self._read_window, windows[0][1])
            for i, (w, _) in enumerate(windows):
                rows, idx = future.result()
                if i + 1 < len(windows):
                    future = pool.submit(self._read_window, windows[i + 1][1])
                if carry_rows is not None and len(carry_idx):
                    rows, idx = np.concatenate([carry_rows, rows]), np.concatenate([carry_idx, idx])
                perm = numpy_rng(self.seed, "window", epoch, self.rank, w).permutation(len(idx))
                n_full = len(perm) // self.batch_size * self.batch_size
                for b in range(0, n_full, self.batch_size):
                    sel = perm[b : b + self.batch_size]
                    yield rows[sel], idx[sel]
                rest = perm[n_full:]
                carry_rows, carry_idx = rows[rest], idx[rest]
        if len(carry_idx) and not self.drop_last:
            yield carry_rows, carry_idx

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        info = get_worker_info()
        return self.batches(info.id, info.num_workers) if info is not None else self.batches()


class BlockLoader:
    """The training loader: batched sample dicts in shuffled block order (see the module docstring).

    Args:
        source: the data set.
        batch_size: samples per batch.
        seed: base seed of the order and of the augmentation generator.
        num_workers: 0 reads in this process with one read-ahead thread;
            W > 0 reads in W DataLoader worker processes (started per epoch)
            and converts the uint8 batches here.
        read_size, buffer_size, drop_last, rank, world_size: see :class:`BlockStream`.
        device: where the batches are delivered (default: the CPU). For
            another device the collated batch is pinned (CUDA), copied
            without blocking and finished on that device (module docstring).
        prefetch: batches prepared ahead by a producer thread, so that work
            overlaps the consumer's; 0 prepares each batch in the consumer's
            thread when it is asked for. The batches and their order do not
            depend on it.
    """

    def __init__(
        self,
        source: BlockSource,
        batch_size: int,
        *,
        seed: int = 0,
        num_workers: int = 0,
        read_size: int | None = None,
        buffer_size: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        prefetch: int = 2,
    ) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.source = source
        self.stream = BlockStream(
            source, batch_size, seed=seed, read_size=read_size, buffer_size=buffer_size,
            drop_last=drop_last, rank=rank, world_size=world_size,
        )
        self.num_workers = int(num_workers)
        self.device = torch.device("cpu" if device is None else device)
        self.prefetch = int(prefetch)

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows."""
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch (exact for the current epoch)."""
        return self.stream.num_batches(max(1, self.num_workers))

    def _raw(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.num_workers == 0:
            yield from self.stream.batches(epoch=epoch)
            return
        stream = copy.copy(self.stream)  # the workers get this pass's epoch
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers)
        for rows, idx in loader:
            yield rows.numpy(), idx.numpy()

    def _prepared(self, epoch: int, generator: torch.Generator) -> Iterator[dict[str, Any]]:
        """The producer's part: collated batches, finished here for a CPU consumer, else pinned (CUDA)."""
        on_host, pin = self.device.type == "cpu", self.device.type == "cuda"
        for rows, idx in self._raw(epoch):
            batch = self.source.collate(rows, idx)
            if on_host:
                yield self.source.finish(batch, generator)
            else:
                yield {k: v.pin_memory() if pin and isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _on_device(self, batches: Iterator[dict[str, Any]], generator: torch.Generator) -> Iterator[dict[str, Any]]:
        """The consumer's part for a device other than the CPU: copy, then finish there."""
        try:
            for batch in batches:
                moved = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                         for k, v in batch.items()}
                yield self.source.finish(moved, generator)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch  # fixed for the pass, whatever set_epoch does meanwhile
        s = self.stream
        generator = seeded_generator(s.seed, "augment", epoch, s.rank)
        batches = self._prepared(epoch, generator)
        if self.prefetch:
            batches = prefetch_in_thread(batches, self.prefetch, name="block-loader")
        return batches if self.device.type == "cpu" else self._on_device(batches, generator)
