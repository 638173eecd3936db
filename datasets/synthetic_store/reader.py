"""Reading a complete synthetic store: :func:`open_synthetic`, its splits, and the checks of an opened store.

Readers open a store through :func:`open_synthetic` (the torch data set on
top of it, registered as ``synthetic``, is :mod:`datasets.synthetic`);
``python -m datasets.verify STORE`` re-reads every block (:func:`verify_store`).
Which check runs where, and what each costs, is in
:mod:`datasets.synthetic_store.integrity`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.abc.store import Store

from datasets.label_tasks import LabelTask, label_task
from plumbing.errors import UserError

from .format import ARRAYS, DONE, FORMAT, FORMAT_VERSION, SPLIT_ALIASES, SPLITS, StoreAttrs, n_blocks
from .integrity import (
    READ_ERRORS,
    REGENERATE,
    BlockFault,
    checksum_fault,
    damage_message,
    missing_objects,
    unreadable,
)
from .zarr_access import DamagedRoot, make_store, root_attrs


@dataclass
class SyntheticSplit:
    """One split of a store: images stay on disk, the small per-image arrays and the block markers are in memory.

    :meth:`read_images` names the store and block of any read that fails and
    checks every block it reads whole against the block's checksum.
    """

    url: str
    name: str
    images: zarr.Array
    labels: np.ndarray
    conditions: np.ndarray
    seeds: np.ndarray
    markers: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def chunk_images(self) -> int:
        return self.images.chunks[0]

    @property
    def block_size(self) -> int:
        return (self.images.shards or self.images.chunks)[0]

    @property
    def n_blocks(self) -> int:
        return n_blocks(len(self), self.block_size)

    def block_range(self, block: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of ``block``."""
        return block * self.block_size, min((block + 1) * self.block_size, len(self))

    def _checksum_fault(self, block: int, images: np.ndarray) -> str | None:
        s, e = self.block_range(block)
        return checksum_fault(int(self.markers[block]), images, self.labels[s:e], self.conditions[s:e], self.seeds[s:e])

    def block_fault(self, block: int) -> str | None:
        """What is wrong with ``block`` when it is re-read whole (``None``: it matches its checksum)."""
        s, e = self.block_range(block)
        try:
            images = self.images[s:e]
        except READ_ERRORS as exc:
            return unreadable("images", exc)
        return self._checksum_fault(block, images)

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """uint8 ``[stop - start, 1, H, W]`` (contiguous rows: one read per touched block, one decode per chunk).

        Raises:
            UserError: a block does not decode, or a block read whole does not match its checksum.
        """
        stop = min(stop, len(self))
        start = min(max(start, 0), stop)
        if start == stop:
            return self.images[start:stop]
        b = self.block_size
        parts = []
        for k in range(start // b, -(-stop // b)):
            s, e = max(start, k * b), min(stop, (k + 1) * b)
            try:
                rows = self.images[s:e]
            except READ_ERRORS as exc:
                fault = BlockFault(self.name, k, unreadable("images", exc))
                raise UserError(damage_message(self.url, [fault])) from None
            if (s, e) == self.block_range(k):
                reason = self._checksum_fault(k, rows)
                if reason is not None:
                    raise UserError(damage_message(self.url, [BlockFault(self.name, k, reason)]))
            parts.append(rows)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class SyntheticStore:
    """A complete store opened for reading (:func:`open_synthetic`)."""

    url: str
    attrs: StoreAttrs
    splits: dict[str, SyntheticSplit]
    zarr_store: Store
    root: zarr.Group

    @property
    def version(self) -> int:
        return self.attrs.version

    @property
    def setting(self) -> str:
        return self.attrs.setting

    @property
    def task(self) -> LabelTask:
        return label_task(self.version, self.setting)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.attrs.classes

    @property
    def resolution(self) -> int:
        return self.attrs.resolution

    @property
    def condition_columns(self) -> tuple[str, ...]:
        return self.attrs.condition_columns

    def split(self, name: str) -> SyntheticSplit:
        """The split ``train`` or ``val`` (``valid`` accepted)."""
        key = SPLIT_ALIASES.get(name)
        if key is None or key not in self.splits:
            raise UserError(f"synthetic store {self.url} has no split {name!r}; it has {', '.join(self.splits)}")
        return self.splits[key]

    @property
    def n_blocks(self) -> int:
        return sum(part.n_blocks for part in self.splits.values())

    def missing_objects(self) -> dict[tuple[str, int], str]:
        """``(split, block) -> reason`` for blocks with a missing or empty object (one listing of the store)."""
        arrays = {name: {a: self.root[f"{name}/{a}"] for a in (*ARRAYS, DONE)} for name in self.splits}
        return missing_objects(self.zarr_store, arrays, {name: s.block_size for name, s in self.splits.items()})

    def damaged_blocks(self) -> list[BlockFault]:
        """The cheap check: blocks with a missing or empty object that also fail their checksum."""
        faults = []
        for (split, block), reason in sorted(self.missing_objects().items(), key=lambda kv: _split_order(kv[0])):
            if self.splits[split].block_fault(block) is not None:
                faults.append(BlockFault(split, block, reason))
        return faults


def _split_order(key: tuple[str, int]) -> tuple[int, int]:
    return SPLITS.index(key[0]), key[1]


def verify_store(store: SyntheticStore, progress: Callable[[int], None] | None = None) -> list[BlockFault]:
    """The full check: every block re-read and compared with its checksum; ``progress(images)`` after each block.

    A block with a missing object is reported with that reason, else with
    what re-reading it found.
    """
    missing = store.missing_objects()
    faults = []
    for name, part in store.splits.items():
        for k in range(part.n_blocks):
            reason = part.block_fault(k)
            if reason is not None:
                faults.append(BlockFault(name, k, missing.get((name, k), reason)))
            if progress is not None:
                s, e = part.block_range(k)
                progress(e - s)
    return faults


def _required_arrays(url: str, root: zarr.Group, split: str) -> dict[str, zarr.Array]:
    out = {}
    for name in (*ARRAYS, DONE):
        try:
            node = root[f"{split}/{name}"]
        except KeyError:
            node = None
        if not isinstance(node, zarr.Array):
            raise UserError(f"synthetic store {url} is damaged: it lacks the array {split}/{name}; {REGENERATE}")
        out[name] = node
    return out


def _read_whole(url: str, split: str, name: str, arr: zarr.Array, rows_per_block: int) -> np.ndarray:
    """A small array read whole; a chunk that does not decode is one error line naming its block."""
    try:
        return arr[:]
    except READ_ERRORS as exc:
        first = exc
    for k in range(n_blocks(arr.shape[0], rows_per_block)):
        try:
            arr[k * rows_per_block : (k + 1) * rows_per_block]
        except READ_ERRORS as exc:
            raise UserError(damage_message(url, [BlockFault(split, k, unreadable(name, exc))])) from None
    raise UserError(f"synthetic store {url} is damaged: {split}/{name} {unreadable('is', first)}; {REGENERATE}")


def open_synthetic(url: str | Path, *, check: bool = True) -> SyntheticStore:
    """Open a complete store for reading.

    The small per-image arrays and block markers are read whole; with
    ``check`` the store's objects are listed once and blocks with a missing
    or empty object must still match their checksums (the cheap check of
    :mod:`datasets.synthetic_store.integrity`).

    Raises:
        UserError: nothing there, not a synthetic store, unreadable root
            metadata, an unknown format version, root attributes that are not
            a :class:`StoreAttrs` record (unknown or missing keys), an incomplete store
            (interrupted generation), a missing array, or a damaged block
            (one line naming the store and the first damaged blocks).
    """
    url = str(url)
    try:
        store = make_store(url, read_only=True)
        raw = root_attrs(store)
    except FileNotFoundError:
        raw = None
    except DamagedRoot as exc:
        raise UserError(
            f"cannot open the synthetic store {url}: its root metadata zarr.json is unreadable ({exc})"
        ) from None
    except (OSError, ValueError, ImportError) as exc:  # unknown protocol, missing backend
        raise UserError(f"cannot open the synthetic store {url}: {getattr(exc, 'strerror', None) or exc}") from None
    if raw is None:
        raise UserError(f"no synthetic store at {url}")
    if raw.get("format") != FORMAT:
        raise UserError(f"{url} is not a {FORMAT} store (format {raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"synthetic store {url} has format version {raw.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    if not raw.get("complete"):
        raise UserError(
            f"store {url} is incomplete (generation was interrupted); rerun the same synth.generate command to resume"
        )
    try:
        attrs = StoreAttrs.from_dict(raw)
    except UserError as exc:
        raise UserError(f"cannot open the synthetic store {url}: {exc}") from None
    root = zarr.open_group(store=store, mode="r")
    splits = {}
    for name in (s for s in SPLITS if s in attrs.counts or s in root):
        arrays = _required_arrays(url, root, name)
        images = arrays["images"]
        block = (images.shards or images.chunks)[0]
        n = images.shape[0]
        lengths = {a: arr.shape[0] for a, arr in arrays.items()}
        if any(lengths[a] != n for a in ARRAYS) or lengths[DONE] != n_blocks(n, block):
            raise UserError(
                f"synthetic store {url} is damaged: the lengths of its {name} arrays disagree ({lengths}); {REGENERATE}"
            )
        small = {a: _read_whole(url, name, a, arrays[a], block) for a in ("labels", "conditions", "seeds")}
        splits[name] = SyntheticSplit(
            url=url, name=name, images=images, markers=_read_whole(url, name, DONE, arrays[DONE], 1), **small
        )
    opened = SyntheticStore(url=url, attrs=attrs, splits=splits, zarr_store=store, root=root)
    if check:
        faults = opened.damaged_blocks()
        if faults:
            raise UserError(damage_message(url, faults))
    return opened
