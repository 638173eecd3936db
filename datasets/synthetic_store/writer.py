"""Writing a synthetic store block by block: :class:`SyntheticStoreWriter` and :func:`write_pending_blocks`.

``synth.generate`` (through :mod:`synth.generation`) writes a store with
these; the format is :mod:`datasets.synthetic_store.format`.

Durability (a kill at any moment): zarr's ``LocalStore`` writes every object
to a temporary file and renames it into place, so an object is either its old
or its new version; object stores (fsspec URLs) replace objects whole. A
block's marker is cleared before and set after its data, so a set marker
always describes data that is fully written; a kill mid-block leaves the
block pending and resuming rewrites it (temporary ``*.partial`` files a kill
leaves behind are deleted on resume). A write that fails (a full disk) is one
error line and leaves the block pending as well. A resumed store keeps its
layout: a writer asked for another one refuses. :meth:`SyntheticStoreWriter.finish`
re-reads every block, compares its checksum and only then sets ``complete``.
Process kills are covered; no ``fsync`` is issued, so data the operating
system had not flushed at a power loss is not (before ``finish`` such a block
fails the checksum pass and is rewritten on resume).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from datasets.label_tasks import label_task
from plumbing.errors import UserError

from .format import (
    ARRAYS,
    DONE,
    FORMAT,
    FORMAT_VERSION,
    SPLITS,
    ZSTD_LEVEL,
    StoreAttrs,
    StoreLayout,
    block_checksum,
    content_attrs,
    image_codec,
    library_versions,
    n_blocks,
)
from .integrity import describe_faults
from .reader import open_synthetic
from .zarr_access import DamagedRoot, holds_only_store_objects, make_store, root_attrs, store_is_empty

#: The rows of one block, as :meth:`SyntheticStoreWriter.write_block` takes them: images, labels, conditions, seeds.
BlockRows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class _SplitArrays:
    n: int
    images: zarr.Array
    labels: zarr.Array
    conditions: zarr.Array
    seeds: zarr.Array
    done: zarr.Array

    @property
    def block_size(self) -> int:
        return self.images.shards[0]

    @property
    def n_blocks(self) -> int:
        return n_blocks(self.n, self.block_size)


class SyntheticStoreWriter:
    """Writes one store block by block; resumable, and safe to kill at any moment.

    One writer per store at a time. Typical use::

        w = SyntheticStoreWriter.open(url, attrs=StoreAttrs(...), overwrite=False)
        for split in w.splits:
            write_pending_blocks(w, split, rows)  # rows(start, stop) -> images, labels, conditions, seeds
        w.finish()
    """

    def __init__(self, url: str, group: zarr.Group, attrs: StoreAttrs, arrays: dict[str, _SplitArrays]) -> None:
        self.url = url
        self.group = group
        self.attrs = attrs
        self._arrays = arrays

    # -- opening

    @classmethod
    def open(
        cls, url: str | Path, *, attrs: StoreAttrs, overwrite: bool, layout: StoreLayout | None = None
    ) -> SyntheticStoreWriter:
        """Create a store, or reopen an interrupted one with the same content attributes to resume.

        Args:
            url: local folder or fsspec URL.
            attrs: the root attributes; the splits and their sizes are those of
                ``attrs.counts``, the images ``attrs.resolution`` px square, the
                condition vectors ``attrs.c_dim`` long. ``format``,
                ``format_version`` and ``complete`` are set here, ``created`` and
                ``library_versions`` default to now and :func:`library_versions`.
            overwrite: delete an existing store (complete, incomplete or with
                unreadable root metadata) first.
            layout: images per chunk and per block; default
                :meth:`StoreLayout.for_resolution` for a new store, the store's
                own for a resumed one (another layout is refused).

        Raises:
            ValueError: ``attrs`` contradict themselves (splits other than
                ``train``/``val``, negative counts, classes not those of the
                label task, as many condition columns as ``c_dim``, no generator hash).
            UserError: the store is complete (without ``overwrite``; when the
                cheap check of :mod:`datasets.synthetic_store.integrity` finds
                damaged blocks, they are marked pending first), holds an
                interrupted generation with other content attributes or another
                layout, has unreadable root metadata (without ``overwrite``), or
                the location holds something that is not a synthetic store.
        """
        url = str(url)
        new_attrs = cls._new_attrs(attrs)
        new_dict = new_attrs.to_dict()
        store = make_store(url, read_only=False)
        try:
            existing = root_attrs(store)
        except DamagedRoot as exc:
            if not overwrite:
                raise UserError(
                    f"the root metadata (zarr.json) of {url} is unreadable ({exc}); "
                    "pass --overwrite to replace the store"
                ) from None
            if not holds_only_store_objects(store):
                raise UserError(
                    f"the root metadata (zarr.json) of {url} is unreadable and the location holds objects outside "
                    "train/ and val/; refusing to replace it (choose another path or delete it)"
                ) from None
            existing, overwrite = None, True
        else:
            if existing is not None and existing.get("format") != FORMAT:
                raise UserError(
                    f"{url} holds a zarr hierarchy that is not a {FORMAT} store; "
                    "refusing to write there (choose another path)"
                )
            if existing is None and not store_is_empty(store):
                raise UserError(
                    f"{url} exists and is not empty; refusing to write a synthetic store there (choose another path)"
                )
        if existing is not None and not overwrite:
            if existing.get("complete"):
                cls._refuse_complete(url, store, existing, new_dict)
            old, new = content_attrs(existing), content_attrs(new_dict)
            if existing.get("format_version") != FORMAT_VERSION or old != new:
                diff = [k for k in new if old.get(k) != new.get(k)] or ["format_version"]
                raise UserError(
                    f"synthetic store {url} holds an interrupted generation with other settings "
                    f"({', '.join(diff)} differ); use --overwrite to replace it"
                )
            group = zarr.open_group(store=store, mode="r+")
            if isinstance(store, LocalStore):
                for leftover in store.root.rglob("*.partial"):
                    leftover.unlink(missing_ok=True)
        else:
            group = zarr.open_group(store=store, mode="w", attributes=new_dict)
        arrays = {
            split: cls._ensure_split(url, group, split, n, new_attrs.resolution, new_attrs.c_dim, layout)
            for split, n in new_attrs.split_sizes.items()
        }
        return cls(url, group, new_attrs, arrays)

    @staticmethod
    def _refuse_complete(url: str, store: Store, existing: dict[str, Any], new_attrs: dict[str, Any]) -> None:
        """Refuse a complete store; damaged blocks (cheap check) are marked pending when the settings match."""
        faults = open_synthetic(url, check=False).damaged_blocks()
        if not faults:
            raise UserError(f"synthetic store {url} is already complete; pass --overwrite to replace it")
        same = existing.get("format_version") == FORMAT_VERSION and content_attrs(existing) == content_attrs(new_attrs)
        if not same:
            raise UserError(
                f"synthetic store {url} is complete but damaged: {describe_faults(faults)}; "
                "pass --overwrite to replace it"
            )
        group = zarr.open_group(store=store, mode="r+")
        group.attrs["complete"] = False
        for fault in faults:
            group[f"{fault.split}/{DONE}"][fault.block] = 0
        raise UserError(
            f"synthetic store {url} is complete but damaged: {describe_faults(faults)}; the damaged blocks were "
            "marked pending: rerun the same synth.generate command to rewrite them, or pass --overwrite"
        )

    @staticmethod
    def _new_attrs(attrs: StoreAttrs) -> StoreAttrs:
        """``attrs`` checked, as written: format and version set, not complete, creation time and versions filled."""
        sizes = attrs.split_sizes
        bad = [s for s in sizes if s not in SPLITS]
        if not sizes or bad:
            raise ValueError(f"counts must name splits among {SPLITS}, got {sorted(sizes)}")
        if any(n < 0 for per_class in attrs.counts.values() for n in per_class.values()):
            raise ValueError(f"counts must be >= 0, got {attrs.counts}")
        if not attrs.generator.sha256:
            raise ValueError("store attributes lack generator.sha256")
        task = label_task(attrs.version, attrs.setting)
        if tuple(attrs.classes) != task.classes:
            raise ValueError(f"classes {list(attrs.classes)} are not those of task {task.name}: {list(task.classes)}")
        if len(attrs.condition_columns) != attrs.c_dim:
            raise ValueError(f"{len(attrs.condition_columns)} condition_columns for c_dim {attrs.c_dim}")
        return dataclasses.replace(
            attrs,
            format=FORMAT,
            format_version=FORMAT_VERSION,
            complete=False,
            created=attrs.created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            library_versions=attrs.library_versions or library_versions(),
        )

    @staticmethod
    def _ensure_split(
        url: str, root: zarr.Group, split: str, n: int, resolution: int, c_dim: int, layout: StoreLayout | None
    ) -> _SplitArrays:
        """Create the split's arrays where missing (creation itself may have been interrupted) and check the rest."""
        group = root.require_group(split)
        existing = dict(group.arrays())
        images = existing.get("images")
        if images is not None:
            stored = StoreLayout(chunk_images=images.chunks[0], block_size=images.shards[0])
            if layout is not None and layout != stored:
                raise UserError(
                    f"synthetic store {url} is being written in blocks of {stored.block_size} images "
                    f"(chunks of {stored.chunk_images}), not {layout.block_size} ({layout.chunk_images}); resume it "
                    f"with --block-size {stored.block_size} or without --block-size, or pass --overwrite"
                )
            layout = stored
        layout = layout or StoreLayout.for_resolution(resolution)
        c, b = layout.chunk_images, layout.block_size
        zstd = ZstdCodec(level=ZSTD_LEVEL)
        wanted: dict[str, dict[str, Any]] = {
            "images": dict(shape=(n, 1, resolution, resolution), chunks=(c, 1, resolution, resolution),
                           shards=(b, 1, resolution, resolution), compressors=image_codec()),
            "labels": dict(shape=(n,), chunks=(b,), compressors=zstd),
            "conditions": dict(shape=(n, c_dim), chunks=(b, c_dim), compressors=zstd),
            "seeds": dict(shape=(n,), chunks=(b,), compressors=zstd),
        }
        out: dict[str, zarr.Array] = {}
        for name, spec in wanted.items():
            arr = existing.get(name)
            if arr is None:
                arr = group.create_array(name, dtype=ARRAYS[name], fill_value=0, **spec)
            elif arr.shape != spec["shape"] or arr.dtype != np.dtype(ARRAYS[name]):
                raise UserError(
                    f"synthetic store {url}: {split}/{name} has shape {arr.shape}, expected {spec['shape']}; "
                    "use --overwrite"
                )
            out[name] = arr
        done = existing.get(DONE)
        if done is None:
            done = group.create_array(
                DONE, shape=(n_blocks(n, b),), dtype="int64", chunks=(1,), compressors=None, fill_value=0
            )
        return _SplitArrays(n=n, done=done, **out)

    # -- writing

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    def _split(self, split: str) -> _SplitArrays:
        try:
            return self._arrays[split]
        except KeyError:
            raise ValueError(f"unknown split {split!r}; this store has {self.splits}") from None

    def block_size(self, split: str) -> int:
        """Images per block (the last block of a split may hold fewer)."""
        return self._split(split).block_size

    def block_range(self, split: str, block: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of ``block``."""
        a = self._split(split)
        if not 0 <= block < a.n_blocks:
            raise IndexError(f"{split} has blocks 0..{a.n_blocks - 1}, got {block}")
        return block * a.block_size, min((block + 1) * a.block_size, a.n)

    def pending_blocks(self, split: str) -> list[int]:
        """Blocks whose marker is not set (not durably written), in increasing order."""
        a = self._split(split)
        if a.n_blocks == 0:
            return []
        return np.flatnonzero(a.done[:] == 0).tolist()

    def pending_images(self, split: str) -> int:
        """Images in the pending blocks of ``split``."""
        return sum(stop - start for start, stop in (self.block_range(split, k) for k in self.pending_blocks(split)))

    def write_block(
        self, split: str, block: int, images: np.ndarray, labels: np.ndarray, conditions: np.ndarray, seeds: np.ndarray
    ) -> None:
        """Write the rows of ``block`` (marker cleared first, set last with the block's checksum).

        Raises:
            UserError: the store refused a write (a full disk, permissions); the block stays pending.
        """
        a = self._split(split)
        start, stop = self.block_range(split, block)
        rows = stop - start
        res = a.images.shape[2]
        parts = {
            "images": (images, (rows, 1, res, res)),
            "labels": (labels, (rows,)),
            "conditions": (conditions, (rows, a.conditions.shape[1])),
            "seeds": (seeds, (rows,)),
        }
        data: dict[str, np.ndarray] = {}
        for name, (value, shape) in parts.items():
            arr = np.asarray(value)
            if arr.shape != shape:
                raise ValueError(f"{split} block {block}: {name} has shape {arr.shape}, expected {shape}")
            if name == "images" and arr.dtype != np.uint8:
                raise ValueError(f"images must be uint8, got {arr.dtype}")
            data[name] = np.ascontiguousarray(arr, dtype=ARRAYS[name])
        try:
            a.done[block] = 0
            a.images[start:stop] = data["images"]
            a.labels[start:stop] = data["labels"]
            a.conditions[start:stop] = data["conditions"]
            a.seeds[start:stop] = data["seeds"]
            a.done[block] = block_checksum(data["images"], data["labels"], data["conditions"], data["seeds"])
        except OSError as exc:
            raise UserError(
                f"cannot write {split} block {block} of the synthetic store {self.url}: {exc.strerror or exc}; "
                "the block stays pending: rerun the same synth.generate command to resume"
            ) from exc

    def finish(self) -> None:
        """Verify every block against its checksum and the label counts, then set ``complete``.

        Raises:
            ValueError: blocks are still pending or labels disagree with ``counts``.
            UserError: blocks fail verification (they are marked pending so that
                rerunning the generation rewrites them), or the store refused
                the final write.
        """
        counts, classes = self.attrs.counts, self.attrs.classes
        for split, a in self._arrays.items():
            pending = self.pending_blocks(split)
            if pending:
                raise ValueError(f"{split}: {len(pending)} blocks are still pending (first {pending[0]})")
            markers = a.done[:] if a.n_blocks else np.zeros(0, np.int64)
            labels = a.labels[:]
            bad = []
            for k in range(a.n_blocks):
                s, e = self.block_range(split, k)
                got = block_checksum(a.images[s:e], labels[s:e], a.conditions[s:e], a.seeds[s:e])
                if got != markers[k]:
                    bad.append(k)
            for k in bad:
                a.done[k] = 0
            if bad:
                raise UserError(
                    f"synthetic store {self.url}: {split} blocks {bad[:5]}{'...' if len(bad) > 5 else ''} failed "
                    "verification and were marked pending; rerun the same synth.generate command to rewrite them"
                )
            valid = (labels >= 0) & (labels < len(classes))
            found = np.bincount(labels[valid], minlength=len(classes))
            want = np.array([counts[split].get(c, 0) for c in classes])
            if not valid.all() or not np.array_equal(found, want):
                raise ValueError(
                    f"{split}: label counts {found.tolist()} ({int((~valid).sum())} labels out of range) "
                    f"differ from counts {want.tolist()}"
                )
        try:
            self.group.attrs["complete"] = True
        except OSError as exc:
            raise UserError(
                f"cannot mark the synthetic store {self.url} complete: {exc.strerror or exc}; "
                "rerun the same synth.generate command to finish"
            ) from exc




def write_pending_blocks(
    writer: SyntheticStoreWriter,
    split: str,
    rows: Callable[[int, int], BlockRows],
    progress: Callable[[int], object] | None = None,
) -> int:
    """Write every pending block of ``split``, in increasing order, and return how many images were written.

    ``rows(start, stop)`` gives the rows ``[start, stop)`` of a block (images,
    labels, conditions, seeds, as :meth:`SyntheticStoreWriter.write_block`
    takes them); ``progress(images)`` is called after each block is written.
    Blocks already written are skipped, so calling this again after an
    interruption writes what is left; a deterministic ``rows`` then gives a
    store identical to one written without interruption.

    Raises:
        UserError: the store refused a write (a full disk); that block and the
            ones after it stay pending.
        ValueError: ``rows`` gave arrays of the wrong shape or images not uint8.
    """
    written = 0
    for block in writer.pending_blocks(split):
        start, stop = writer.block_range(split, block)
        writer.write_block(split, block, *rows(start, stop))
        written += stop - start
        if progress is not None:
            progress(stop - start)
    return written
