"""Synthetic data set stores (Zarr 3): the schema, its writer and its reader.

``synth.generate`` writes a store through :class:`SyntheticStoreWriter`; readers
open one through :func:`open_synthetic` / the registered ``synthetic`` data set.
Epochs go through :class:`datasets.block_loader.BlockLoader` (whole blocks in a
shuffled order); random access (``__getitem__``, a ``DataLoader`` with a
shuffling sampler) decodes a whole chunk per image and is the slow path.

Schema, format version 1
------------------------
Root group attributes: ``format`` (``"cxr-synthetic"``), ``format_version``
(1), ``version`` (1/2/3), ``setting`` (``"0s"``/``"Xs"``), ``classes``,
``counts`` (``{"train": {class: n}, "val": {...}}``), ``resolution``,
``c_dim``, ``condition_columns`` (finding schema columns of the condition
vectors), ``generator`` (``{"sha256", "config", "training", "demo"}``),
``seed``, ``truncation``, ``created`` (ISO time), ``library_versions``
(``{torch, zarr, numpy, project}``) and ``complete`` (``False`` until every
block is written and verified).

One group per split (``train/``, ``val/``) with N images:

=================  ======================  ==================================
array              dtype, shape            layout
=================  ======================  ==================================
``images``         uint8 [N, 1, H, W]      Blosc lz4 + bit shuffle chunks of
                                           ``chunk_images`` images inside
                                           shards of ``block_size`` images
``labels``         int64 [N]               zstd, one chunk per block
``conditions``     float32 [N, c_dim]      zstd, one chunk per block
``seeds``          int64 [N]               zstd, one chunk per block
``block_done``     int64 [n_blocks]        one uncompressed chunk per block
=================  ======================  ==================================

A *block* is images ``[k * block_size, min((k + 1) * block_size, N))``: exactly
one shard of ``images`` and one chunk of each other per-image array, so
writing a block rewrites no object of another block. ``block_done[k]`` is 0
while block k is pending and ``1 + crc32(images, labels, conditions, seeds)``
of its rows once written; each marker is its own tiny object, written after
the block's data.

Durability (a kill at any moment): zarr's ``LocalStore`` writes every object
to a temporary file and renames it into place, so an object is either its old
or its new version; object stores (fsspec URLs) replace objects whole. A
block's marker is cleared before and set after its data, so a set marker
always describes data that is fully written; a kill mid-block leaves the
block pending and resuming rewrites it (temporary ``*.partial`` files a kill
leaves behind are deleted on resume). :meth:`SyntheticStoreWriter.finish`
re-reads every block, compares its checksum and only then sets ``complete``.
Process kills are covered; no ``fsync`` is issued, so data the operating
system had not flushed at a power loss is not (before ``finish`` such a block
fails the checksum pass and is rewritten on resume).

Reading: :func:`open_synthetic` refuses incomplete stores and unknown formats;
:class:`SyntheticDataset` (registered as ``synthetic``) yields samples in the
project convention, with the condition vectors turned back into finding
vectors (:func:`conditions_to_findings`).

Layout policy (performance.md: zarr pays a fixed cost per chunk read, so
several images per chunk and contiguous block reads): ``chunk_images`` is the
largest power of two with at most 1 MiB of pixels per chunk (256 at 64 px, 64
at 128 px, 16 at 256 px, 4 at 512 px, 1 at 1024 px); ``block_size`` the
largest power of two with at most 16 MiB per block, between ``chunk_images``
and 1024 (1024 at <= 128 px, 256 at 256 px, 64 at 512 px). The block loader
reads 82-88k images/s at 64 px with 1 MiB or 4 MiB chunks alike, while random
access (one chunk decoded per image) is twice as fast with 1 MiB chunks (425
against 198 images/s on one core): hence 1 MiB.

Image codec: Blosc with lz4 (level 5) after bit shuffling. Generated
radiographs carry pixel noise that byte-oriented compressors barely reduce
(zstd level 3 keeps 0.87-0.93 of the raw size); bit shuffling separates the
smooth high bit planes from the noisy low ones, so lz4 keeps 0.81 of noisy
256 px test images and decodes them about as fast as zstd level 3 does
(one core: 65-90 us per image against 83 us; a plain copy takes 13 us).
Stores written with another codec (format version 1 allows any) read the
same way.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.errors import BaseZarrError
from zarr.storage import FsspecStore, LocalStore

from plumbing.errors import UserError

from .augment import BatchAugment
from .findings import CHEXPERT, NO_FINDING, FindingSchema
from .label_tasks import LabelTask, label_task
from .sample import FINDINGS, ID, IMAGE, LABEL, Sample
from .spec import DataSetSpec

FORMAT = "cxr-synthetic"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val")
SPLIT_ALIASES: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val"}
ENV_VAR = "CXR_SYNTHETIC_ROOT"

#: Root attributes that define a store's content; a resumed generation must match them.
CONTENT_KEYS: tuple[str, ...] = (
    "version",
    "setting",
    "classes",
    "counts",
    "resolution",
    "c_dim",
    "condition_columns",
    "seed",
    "truncation",
    "truncation_center",
    "condition_source",
)

#: Root attributes the generator must supply (the writer adds the others).
REQUIRED_KEYS: tuple[str, ...] = (
    "version",
    "setting",
    "classes",
    "counts",
    "condition_columns",
    "generator",
    "seed",
    "truncation",
)

ARRAYS: dict[str, str] = {"images": "uint8", "labels": "int64", "conditions": "float32", "seeds": "int64"}
DONE = "block_done"
ZSTD_LEVEL = 3
MAX_CHUNK_BYTES = 1 << 20
MAX_BLOCK_BYTES = 16 << 20
MAX_BLOCK_IMAGES = 1024


# --------------------------------------------------------------------------- layout


def image_codec() -> BloscCodec:
    """The images' compressor (see "Image codec" in the module docstring)."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def _floor_pow2(x: float) -> int:
    return 1 << max(0, int(np.floor(np.log2(max(x, 1.0)))))


@dataclass(frozen=True)
class StoreLayout:
    """Images per chunk and per block (= shard); ``block_size`` is a multiple of ``chunk_images``."""

    chunk_images: int
    block_size: int

    def __post_init__(self) -> None:
        if self.chunk_images < 1 or self.block_size < 1 or self.block_size % self.chunk_images:
            raise ValueError(
                f"block_size {self.block_size} must be a positive multiple of chunk_images {self.chunk_images}"
            )

    @classmethod
    def for_resolution(cls, resolution: int) -> StoreLayout:
        """The default layout for square ``resolution`` px uint8 images (see the module docstring)."""
        pixels = resolution * resolution
        chunk = min(MAX_BLOCK_IMAGES, _floor_pow2(MAX_CHUNK_BYTES / pixels))
        block = min(MAX_BLOCK_IMAGES, max(chunk, _floor_pow2(MAX_BLOCK_BYTES / pixels)))
        return cls(chunk_images=chunk, block_size=block)


def n_blocks(n: int, block_size: int) -> int:
    return -(-n // block_size)


# --------------------------------------------------------------------------- stores


def _is_url(url: str | Path) -> bool:
    return isinstance(url, str) and "://" in url and not url.startswith("file://")


def make_store(url: str | Path, *, read_only: bool) -> Store:
    """A zarr store for a local path (or ``file://`` URL) or any fsspec URL (``memory://``, ``s3://``, ...).

    Local paths use ``LocalStore`` (atomic object writes); other URLs ``FsspecStore``.
    """
    if _is_url(url):
        return FsspecStore.from_url(str(url), read_only=read_only)
    path = str(url)[len("file://") :] if str(url).startswith("file://") else url
    return LocalStore(Path(path).expanduser(), read_only=read_only)


def _root_attrs(store: Store) -> dict[str, Any] | None:
    """The root group's attributes, ``None`` when the store holds no zarr group."""
    try:
        return dict(zarr.open_group(store=store, mode="r").attrs)
    except FileNotFoundError:
        return None
    except BaseZarrError:
        return {}


def _store_is_empty(store: Store) -> bool:
    if isinstance(store, LocalStore):
        return not store.root.exists() or not any(store.root.iterdir())
    return sync(store.is_empty(""))


def _json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists, numpy scalars -> Python)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"attribute value {o!r} of type {type(o).__name__} is not JSON serialisable")

    return json.loads(json.dumps(value, default=default))


def content_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes that define a store's content (:data:`CONTENT_KEYS` and ``generator.sha256``)."""
    norm = _json_normal(dict(attrs))
    out = {key: norm.get(key) for key in CONTENT_KEYS}
    out["generator.sha256"] = (norm.get("generator") or {}).get("sha256")
    return out


def library_versions() -> dict[str, str]:
    """Versions of torch, zarr, numpy and this project (``unknown`` when it is not installed)."""
    try:
        project = importlib.metadata.version("cxr-synth")
    except importlib.metadata.PackageNotFoundError:
        project = "unknown"
    return {"torch": torch.__version__, "zarr": zarr.__version__, "numpy": np.__version__, "project": project}


def block_checksum(images: np.ndarray, labels: np.ndarray, conditions: np.ndarray, seeds: np.ndarray) -> int:
    """``1 + crc32`` over the raw bytes of one block's rows (never 0, the pending marker)."""
    crc = 0
    for part in (images, labels, conditions, seeds):
        crc = zlib.crc32(np.ascontiguousarray(part).data, crc)
    return crc + 1


# --------------------------------------------------------------------------- writer


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

        w = SyntheticStoreWriter.open(url, attrs=..., split_sizes={"train": n, "val": m},
                                      resolution=256, c_dim=14, overwrite=False)
        for split in w.splits:
            for k in w.pending_blocks(split):
                start, stop = w.block_range(split, k)
                w.write_block(split, k, images, labels, conditions, seeds)  # rows start..stop
        w.finish()
    """

    def __init__(self, url: str, group: zarr.Group, arrays: dict[str, _SplitArrays]) -> None:
        self.url = url
        self.group = group
        self._arrays = arrays

    # -- opening

    @classmethod
    def open(
        cls,
        url: str | Path,
        *,
        attrs: dict[str, Any],
        split_sizes: dict[str, int],
        resolution: int,
        c_dim: int,
        overwrite: bool,
        layout: StoreLayout | None = None,
    ) -> SyntheticStoreWriter:
        """Create a store, or reopen an interrupted one with the same content attributes to resume.

        Args:
            url: local folder or fsspec URL.
            attrs: root attributes (see the module docstring); ``format``,
                ``format_version``, ``resolution``, ``c_dim`` and ``complete``
                are set here, ``created`` and ``library_versions`` default to
                now and :func:`library_versions`.
            split_sizes: images per split (keys among ``train``, ``val``).
            resolution: image height and width.
            c_dim: length of the condition vectors.
            overwrite: delete an existing store (complete or not) first.
            layout: images per chunk and per block; default
                :meth:`StoreLayout.for_resolution`. A resumed store keeps its own.

        Raises:
            UserError: the store is complete (without ``overwrite``), holds an
                interrupted generation with other content attributes, or the
                location holds something that is not a synthetic store.
        """
        url = str(url)
        new_attrs = cls._new_attrs(attrs, split_sizes, resolution, c_dim)
        layout = layout or StoreLayout.for_resolution(resolution)
        store = make_store(url, read_only=False)
        existing = _root_attrs(store)
        if existing is not None and existing.get("format") != FORMAT:
            raise UserError(
                f"{url} holds a zarr hierarchy that is not a {FORMAT} store; "
                "refusing to write there (choose another path)"
            )
        if existing is None and not _store_is_empty(store):
            raise UserError(
                f"{url} exists and is not empty; refusing to write a synthetic store there (choose another path)"
            )
        if existing is not None and not overwrite:
            if existing.get("complete"):
                raise UserError(f"synthetic store {url} is already complete; pass --overwrite to replace it")
            old, new = content_attrs(existing), content_attrs(new_attrs)
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
            group = zarr.open_group(store=store, mode="w", attributes=new_attrs)
        arrays = {
            split: cls._ensure_split(url, group, split, n, resolution, c_dim, layout)
            for split, n in split_sizes.items()
        }
        return cls(url, group, arrays)

    @staticmethod
    def _new_attrs(attrs: dict[str, Any], split_sizes: dict[str, int], resolution: int, c_dim: int) -> dict[str, Any]:
        bad = [s for s in split_sizes if s not in SPLITS]
        if not split_sizes or bad:
            raise ValueError(f"split_sizes must name splits among {SPLITS}, got {sorted(split_sizes)}")
        if any(int(n) < 0 for n in split_sizes.values()):
            raise ValueError(f"split sizes must be >= 0, got {split_sizes}")
        out = _json_normal(dict(attrs))
        missing = [k for k in REQUIRED_KEYS if k not in out]
        if not (out.get("generator") or {}).get("sha256"):
            missing.append("generator.sha256")
        if missing:
            raise ValueError(f"store attributes lack {', '.join(missing)}")
        task = label_task(out["version"], out["setting"])
        if list(out["classes"]) != list(task.classes):
            raise ValueError(f"classes {out['classes']} are not those of task {task.name}: {list(task.classes)}")
        for key, value in (("resolution", resolution), ("c_dim", c_dim)):
            if key in out and out[key] != value:
                raise ValueError(f"attrs[{key!r}] = {out[key]!r} contradicts the argument {value!r}")
        if len(out["condition_columns"]) != c_dim:
            raise ValueError(f"{len(out['condition_columns'])} condition_columns for c_dim {c_dim}")
        for split, n in split_sizes.items():
            total = sum((out["counts"].get(split) or {}).values())
            if total != n:
                raise ValueError(f"counts[{split!r}] sum to {total}, split_sizes says {n}")
        out.update(
            format=FORMAT, format_version=FORMAT_VERSION, resolution=int(resolution), c_dim=int(c_dim), complete=False
        )
        out.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        out.setdefault("library_versions", library_versions())
        return out

    @staticmethod
    def _ensure_split(
        url: str, root: zarr.Group, split: str, n: int, resolution: int, c_dim: int, layout: StoreLayout
    ) -> _SplitArrays:
        """Create the split's arrays where missing (creation itself may have been interrupted) and check the rest."""
        group = root.require_group(split)
        existing = dict(group.arrays())
        images = existing.get("images")
        if images is not None:
            layout = StoreLayout(chunk_images=images.chunks[0], block_size=images.shards[0])
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

    def write_block(
        self, split: str, block: int, images: np.ndarray, labels: np.ndarray, conditions: np.ndarray, seeds: np.ndarray
    ) -> None:
        """Write the rows of ``block`` (marker cleared first, set last with the block's checksum)."""
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
        a.done[block] = 0
        a.images[start:stop] = data["images"]
        a.labels[start:stop] = data["labels"]
        a.conditions[start:stop] = data["conditions"]
        a.seeds[start:stop] = data["seeds"]
        a.done[block] = block_checksum(data["images"], data["labels"], data["conditions"], data["seeds"])

    def finish(self) -> None:
        """Verify every block against its checksum and the label counts, then set ``complete``.

        Raises:
            ValueError: blocks are still pending or labels disagree with ``counts``.
            UserError: blocks fail verification; they are marked pending so that
                rerunning the generation rewrites them.
        """
        counts, classes = self.group.attrs["counts"], self.group.attrs["classes"]
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
        self.group.attrs["complete"] = True


# --------------------------------------------------------------------------- reader


@dataclass
class SyntheticSplit:
    """One split of a store: images stay on disk, the small per-image arrays are in memory."""

    name: str
    images: zarr.Array
    labels: np.ndarray
    conditions: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def chunk_images(self) -> int:
        return self.images.chunks[0]

    @property
    def block_size(self) -> int:
        return (self.images.shards or self.images.chunks)[0]

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """uint8 ``[stop - start, 1, H, W]`` (contiguous rows: one read per touched chunk)."""
        return self.images[start:stop]


@dataclass
class SyntheticStore:
    """A complete store opened for reading (:func:`open_synthetic`)."""

    url: str
    attrs: dict[str, Any]
    splits: dict[str, SyntheticSplit]

    @property
    def version(self) -> int:
        return int(self.attrs["version"])

    @property
    def setting(self) -> str:
        return str(self.attrs["setting"])

    @property
    def task(self) -> LabelTask:
        return label_task(self.version, self.setting)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.attrs["classes"])

    @property
    def resolution(self) -> int:
        return int(self.attrs["resolution"])

    @property
    def condition_columns(self) -> tuple[str, ...]:
        return tuple(self.attrs["condition_columns"])

    def split(self, name: str) -> SyntheticSplit:
        """The split ``train`` or ``val`` (``valid`` accepted)."""
        key = SPLIT_ALIASES.get(name)
        if key is None or key not in self.splits:
            raise UserError(f"synthetic store {self.url} has no split {name!r}; it has {', '.join(self.splits)}")
        return self.splits[key]


def open_synthetic(url: str | Path) -> SyntheticStore:
    """Open a complete store for reading.

    Raises:
        UserError: nothing there, not a synthetic store, an unknown format
            version, or an incomplete store (interrupted generation).
    """
    url = str(url)
    try:
        store = make_store(url, read_only=True)
        attrs = _root_attrs(store)
    except FileNotFoundError:
        attrs = None
    except (OSError, ValueError, ImportError) as exc:  # unknown protocol, missing backend, damaged zarr.json
        raise UserError(f"cannot open the synthetic store {url}: {getattr(exc, 'strerror', None) or exc}") from None
    if attrs is None:
        raise UserError(f"no synthetic store at {url}")
    if attrs.get("format") != FORMAT:
        raise UserError(f"{url} is not a {FORMAT} store (format {attrs.get('format')!r})")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"synthetic store {url} has format version {attrs.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    if not attrs.get("complete"):
        raise UserError(
            f"store {url} is incomplete (generation was interrupted); rerun the same synth.generate command to resume"
        )
    root = zarr.open_group(store=store, mode="r")
    splits = {}
    for name in SPLITS:
        if name in root:
            g = root[name]
            splits[name] = SyntheticSplit(
                name=name, images=g["images"], labels=g["labels"][:], conditions=g["conditions"][:], seeds=g["seeds"][:]
            )
    return SyntheticStore(url=url, attrs=attrs, splits=splits)


# --------------------------------------------------------------------------- torch data set


def conditions_to_findings(
    conditions: np.ndarray, columns: Sequence[str], schema: FindingSchema = CHEXPERT
) -> np.ndarray:
    """Finding vectors ``[N, K]`` over ``schema`` from condition vectors over ``columns``.

    The condition vector is ``1[finding == 1]`` with "No Finding" cleared
    (:meth:`FindingSchema.condition`); its inverse used here copies the 1/0
    values of the shared columns, restores ``No Finding = 1`` exactly when no
    finding of ``schema`` is 1, and leaves columns the conditions do not cover
    blank (nan). The label-task policy then gives the generated classes back.
    """
    cond = np.asarray(conditions, dtype=np.float32)
    out = np.full((cond.shape[0], len(schema.columns)), np.nan, dtype=np.float32)
    shared = [c for c in columns if c in schema.columns]
    out[:, schema.indices(shared)] = cond[:, [list(columns).index(c) for c in shared]]
    if NO_FINDING in shared:
        findings = out[:, schema.finding_indices]
        out[:, schema.index(NO_FINDING)] = (~(findings == 1).any(axis=1)).astype(np.float32)
    return out


def images_to_float(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 ``[B, C, h, w]`` -> float32 ``[B, C, r, r]`` in [0, 1]: x / 255, resized as every reader resizes.

    Host arrays are scaled in numpy (as fast as torch's single-threaded cast,
    without intra-op thread start-up, which dominates at these sizes);
    tensors on a GPU are scaled there. A size change uses
    :func:`datasets.transforms.square_resize` (antialiased bilinear).
    """
    if isinstance(images, torch.Tensor) and images.device.type != "cpu":
        x = images.to(torch.float32) * (1.0 / 255.0)  # a new tensor even when the input is float32 already
    else:
        x = torch.from_numpy(np.multiply(np.asarray(images), np.float32(1.0 / 255.0), dtype=np.float32))
    b, c, h, w = x.shape
    if h != resolution or w != resolution:
        from .transforms import square_resize  # imports MONAI, which writers and plain readers do not need

        x = square_resize(x.reshape(b * c, h, w), resolution).reshape(b, c, resolution, resolution)
    return x


class SyntheticDataset(Dataset):
    """One split of a store in the project's sample convention.

    ``image`` float32 [1, r, r] in [0, 1] (with ``augment``, the shared
    training augmentation, batched: :class:`datasets.augment.BatchAugment`); ``label`` the store's class index
    (the store has its own classes: its version and setting); ``findings``
    :func:`conditions_to_findings` over CHEXPERT; ``id`` ``"<split>/<index>"``.

    Random access (``__getitem__``) reads one chunk per image; for epochs use
    :class:`datasets.block_loader.BlockLoader`, which reads contiguous blocks
    through :meth:`read_rows` and batches them with :meth:`collate` and
    :meth:`finish`.
    """

    def __init__(
        self, store: SyntheticStore, split: str = "train", *, resolution: int = 256, augment: bool = False
    ) -> None:
        self.store = store
        self.data = store.split(split)
        self.resolution = int(resolution)
        self.augment = BatchAugment(1) if augment else None
        findings = conditions_to_findings(self.data.conditions, store.condition_columns, CHEXPERT)
        self.findings = torch.from_numpy(findings)
        self.labels = torch.from_numpy(self.data.labels.astype(np.int64))
        width = max(6, len(str(max(len(self.data) - 1, 0))))
        self._id_format = f"{self.data.name}/{{:0{width}d}}"

    def __len__(self) -> int:
        return len(self.data)

    # block-source protocol (datasets.block_loader)

    @property
    def chunk_length(self) -> int:
        return self.data.chunk_images

    @property
    def block_length(self) -> int:
        return self.data.block_size

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.data.read_images(start, stop)

    def collate(self, rows: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
        """The stored uint8 rows and their labels as a batch of CPU tensors (no copy of the images)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        ids = [self._id_format.format(int(i)) for i in idx]
        return {IMAGE: torch.from_numpy(np.asarray(rows)), LABEL: self.labels[idx], FINDINGS: self.findings[idx], ID: ids}

    def finish(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Images as float32 in [0, 1] at ``resolution``, augmented when asked, on the batch's device.

        ``generator`` (a CPU generator) drives the augmentation (else torch's global RNG).
        """
        x = images_to_float(batch[IMAGE], self.resolution)
        if self.augment is not None:
            x = self.augment(x, generator)[0]
        return {**batch, IMAGE: x}

    # map-style access

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """Samples for ``indices``.

        One slice read when they span at most ``max(len(indices), chunk_length)`` rows, else one read each.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return []
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= max(len(idx), self.chunk_length):
            rows = self.read_rows(lo, hi)[idx - lo]
        else:
            rows = np.stack([self.read_rows(int(i), int(i) + 1)[0] for i in idx])
        batch = self.finish(self.collate(rows, idx))
        return [
            {IMAGE: batch[IMAGE][j], LABEL: int(batch[LABEL][j]), FINDINGS: batch[FINDINGS][j], ID: batch[ID][j]}
            for j in range(len(idx))
        ]


def factory(
    root: str | Path | None,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    **options: Any,
) -> SyntheticDataset:
    """The registered ``synthetic`` data set: ``root`` is the store (local folder or URL).

    ``task`` may be ``None`` or the store's own task; another task is a
    :class:`UserError` (a store's images were generated for one task).
    No reader options.
    """
    if options:
        raise UserError(f"synthetic: unknown options {', '.join(sorted(options))}")
    if root is None:
        raise UserError(f"synthetic: no store given; pass --data-root or set {ENV_VAR}")
    store = open_synthetic(root)
    if task is not None and (task.version, task.setting) != (store.version, store.setting):
        raise UserError(
            f"synthetic store {store.url} holds task {store.task.name} ({', '.join(store.classes)}); "
            f"it cannot serve task {task.name}"
        )
    return SyntheticDataset(store, split, resolution=resolution, augment=augment)


SPEC = DataSetSpec(
    name="synthetic",
    description="class-conditional synthetic radiographs from a Zarr store written by synth.generate",
    layout="<store>/zarr.json with train/ and val/ groups (format cxr-synthetic)",
    env_var=ENV_VAR,
    channels=1,
    schema=CHEXPERT,
    classes=None,
    factory=factory,
)
