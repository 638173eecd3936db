"""The synthetic data set store format (Zarr 3): schema, layout, writer, opening, checks and checksums.

``synth.generate`` writes a store through :class:`SyntheticStoreWriter`;
readers open one through :func:`open_synthetic` (the torch data set on top of
it, registered as ``synthetic``, is :mod:`datasets.synthetic`), and
``python -m datasets.verify STORE`` re-reads every block
(:func:`verify_store`).

Schema, format version 1
------------------------
Root group attributes: ``format`` (``"cxr-synthetic"``), ``format_version``
(1), ``version`` (1/2/3), ``setting`` (``"0s"``/``"Xs"``), ``classes``,
``counts`` (``{"train": {class: n}, "val": {...}}``; its keys are the
splits the store holds), ``resolution``, ``c_dim``, ``condition_columns``
(finding schema columns of the condition vectors), ``generator``
(``{"sha256", "config", "training", "trained_on_phantoms"}``: the weights'
hash, network configuration, training record and whether it learned from
phantoms), ``seed``, ``truncation``, ``truncation_center``,
``condition_source`` (``{"file", "sha256"}`` of the finding vectors the
conditions are drawn from), ``condition_policy`` (setting ``0s`` only:
``"empirical"``, conditions carry Support Devices at the real rate of each
class, or ``"clear"``, the non-finding columns are 0; a 0s store without the
key predates it and is ``"clear"``; see :mod:`synth.conditions`), ``created`` (ISO time),
``library_versions`` (``{torch, zarr, numpy, project}``) and ``complete``
(``False`` until every block is written and verified).

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
of its rows once written (:func:`block_checksum`); each marker is its own
tiny object, written after the block's data.

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

Integrity after writing
-----------------------
zarr reads an object that is missing (deleted, or truncated to nothing) as its
fill value, zeros, without an error; a damaged object fails to decode (a
shard index checksum, a Blosc or zstd error) or, when it still decodes, holds
other bytes than its block's checksum describes. A fault is one
:class:`UserError` line naming the store and the block, raised by the check
that finds it:

* On open (:func:`open_synthetic`, cheap): every split (named in ``counts``
  or present) must hold all five arrays; ``labels``, ``conditions``, ``seeds`` and
  ``block_done`` are read whole (a chunk that does not decode names its
  block); the store's objects are listed once (one directory walk, or one
  listing of an object store) and every expected chunk and shard object of
  every array must exist and be non-empty. zarr omits an object whose values
  all equal the fill value (a block of labels 0, say), so a block with a
  missing object is re-read and counts as damaged only when it fails its
  checksum. Cost: one listing plus the small arrays; images are not decoded.
* While reading (:meth:`SyntheticSplit.read_images`): a block that fails to
  decode names itself, and every block read whole (the block loader's reads)
  is compared with its checksum, in the reading thread: crc32 runs at 2.2
  GB/s against 0.25 GB/s for decoding 64 px blocks, and block-loader epochs
  of 4096 images at 64 px read 55.9k images/s with the check against 56.2k
  without. Random access (one chunk) decodes but cannot check a partial
  block.
* Full (:func:`verify_store`, ``python -m datasets.verify STORE``): every block
  re-read and compared with its checksum; costs one pass of decoding.

A writer reopening a complete store runs the cheap check: with the same
settings, damaged blocks are marked pending (``complete`` cleared), so
rerunning the same generation rewrites them; ``--overwrite`` replaces the store, also one whose root
metadata (``zarr.json``) no longer parses, provided everything it holds lies
in ``zarr.json``, ``train/`` and ``val/``.

Layout policy: zarr pays a fixed cost per chunk read, so several images per
chunk and contiguous block reads: ``chunk_images`` is the largest power of
two with at most 1 MiB of pixels per chunk (256 at 64 px, 64 at 128 px, 16 at
256 px, 4 at 512 px, 1 at 1024 px); ``block_size`` the largest power of two
with at most 16 MiB per block, between ``chunk_images`` and 1024 (1024 at
<= 128 px, 256 at 256 px, 64 at 512 px). Measured with ``bench.read_store``
(4096 noisy images at 64 px, one core): the block loader reads 82-88k
images/s with 1 MiB or 4 MiB chunks alike, while random access (one chunk
decoded per image) is twice as fast with 1 MiB chunks (425 against 198
images/s): hence 1 MiB.

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
import itertools
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.errors import BaseZarrError
from zarr.storage import FsspecStore, LocalStore

from plumbing.errors import UserError

from .label_tasks import LabelTask, label_task

FORMAT = "cxr-synthetic"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val")
SPLIT_ALIASES: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val"}

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
    "condition_policy",
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

#: What zarr raises for an object it cannot read or decode (shard index checksum, Blosc/zstd errors, I/O).
READ_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, RuntimeError)
#: Damaged blocks named in one error line.
SHOWN_FAULTS = 3
REGENERATE = "regenerate it: rerun synth.generate with --overwrite"


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


class _DamagedRoot(Exception):
    """The root ``zarr.json`` exists but does not parse."""


def _root_attrs(store: Store) -> dict[str, Any] | None:
    """The root group's attributes, ``None`` when the store holds no zarr group, ``{}`` for a zarr array.

    Raises:
        _DamagedRoot: the root metadata does not parse (truncated or overwritten ``zarr.json``).
    """
    try:
        return dict(zarr.open_group(store=store, mode="r").attrs)
    except FileNotFoundError:
        return None
    except BaseZarrError:
        return {}
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError and friends
        raise _DamagedRoot(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def _store_is_empty(store: Store) -> bool:
    if isinstance(store, LocalStore):
        return not store.root.exists() or not any(store.root.iterdir())
    return sync(store.is_empty(""))


async def _listed_keys(store: Store) -> list[str]:
    return [key async for key in store.list()]


def object_sizes(store: Store) -> dict[str, int | None]:
    """Every object of ``store`` and its size in bytes, from one listing (``None`` where a store gives no sizes)."""
    if isinstance(store, LocalStore):
        if not store.root.exists():
            return {}
        return {p.relative_to(store.root).as_posix(): p.stat().st_size for p in store.root.rglob("*") if p.is_file()}
    if isinstance(store, FsspecStore):
        found = sync(store.fs._find(store.path, detail=True, withdirs=False))
        return {path.removeprefix(store.path + "/"): info.get("size") for path, info in found.items()}
    return dict.fromkeys(sync(_listed_keys(store)))


def _holds_only_store_objects(store: Store) -> bool:
    """Whether every object lies where a synthetic store keeps its own: ``zarr.json``, ``train/``, ``val/``."""
    return all(key == "zarr.json" or key.split("/")[0] in SPLITS for key in object_sizes(store))


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
    """The attributes that define a store's content (:data:`CONTENT_KEYS` and ``generator.sha256``).

    A 0s store without ``condition_policy`` predates the key and reads as ``"clear"``.
    """
    norm = _json_normal(dict(attrs))
    out = {key: norm.get(key) for key in CONTENT_KEYS}
    if out["setting"] == "0s" and out["condition_policy"] is None:
        out["condition_policy"] = "clear"  # the only 0s policy before stores recorded one
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


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class BlockFault:
    """A damaged block: ``reason`` says what is wrong with it."""

    split: str
    block: int
    reason: str


def describe_faults(faults: Sequence[BlockFault]) -> str:
    """``train block 1 (images shard missing), ...``: the first :data:`SHOWN_FAULTS` faults and how many more."""
    shown = ", ".join(f"{f.split} block {f.block} ({f.reason})" for f in faults[:SHOWN_FAULTS])
    more = len(faults) - SHOWN_FAULTS
    return shown + (f" and {more} more" if more > 0 else "")


def damage_message(url: str, faults: Sequence[BlockFault]) -> str:
    """The one error line for a damaged store."""
    return f"synthetic store {url} is damaged: {describe_faults(faults)}; {REGENERATE}"


def _unreadable(name: str, exc: Exception) -> str:
    """``images unreadable: ValueError: Stored and computed checksum do not match``: the error's first sentence."""
    text = str(exc).strip().splitlines()
    first = text[0].split(". ")[0].rstrip(".") if text else "no message"
    return f"{name} unreadable: {type(exc).__name__}: {first}"


def _expected_objects(split: str, arrays: Mapping[str, zarr.Array], block_size: int) -> dict[str, tuple[int, str]]:
    """The key of every chunk or shard object of one split's arrays, with its block and a fault reason if absent."""
    out: dict[str, tuple[int, str]] = {}
    for name, arr in arrays.items():
        grid_shape = arr.shards or arr.chunks
        kind = "shard" if arr.shards else "chunk"
        rows_per_block = 1 if name == DONE else block_size
        grid = [range(-(-size // step)) for size, step in zip(arr.shape, grid_shape, strict=True)]
        for coords in itertools.product(*grid):
            key = f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"
            out[key] = (coords[0] * grid_shape[0] // rows_per_block, f"{name} {kind} {{}}")
    return out


def _missing_objects(
    store: Store, split_arrays: Mapping[str, Mapping[str, zarr.Array]], block_sizes: Mapping[str, int]
) -> dict[tuple[str, int], str]:
    """``(split, block) -> reason`` for every block with a chunk or shard object that is missing or empty."""
    sizes = object_sizes(store)
    out: dict[tuple[str, int], str] = {}
    for split, arrays in split_arrays.items():
        for key, (block, reason) in _expected_objects(split, arrays, block_sizes[split]).items():
            if key not in sizes:
                out.setdefault((split, block), reason.format("missing"))
            elif sizes[key] == 0:
                out.setdefault((split, block), reason.format("empty"))
    return out


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
            overwrite: delete an existing store (complete, incomplete or with
                unreadable root metadata) first.
            layout: images per chunk and per block; default
                :meth:`StoreLayout.for_resolution` for a new store, the store's
                own for a resumed one (another layout is refused).

        Raises:
            UserError: the store is complete (without ``overwrite``; when the
                cheap check of the module docstring finds damaged blocks, they
                are marked pending first), holds an interrupted generation with
                other content attributes or another layout, has unreadable root
                metadata (without ``overwrite``), or the location holds
                something that is not a synthetic store.
        """
        url = str(url)
        new_attrs = cls._new_attrs(attrs, split_sizes, resolution, c_dim)
        store = make_store(url, read_only=False)
        try:
            existing = _root_attrs(store)
        except _DamagedRoot as exc:
            if not overwrite:
                raise UserError(
                    f"the root metadata (zarr.json) of {url} is unreadable ({exc}); "
                    "pass --overwrite to replace the store"
                ) from None
            if not _holds_only_store_objects(store):
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
            if existing is None and not _store_is_empty(store):
                raise UserError(
                    f"{url} exists and is not empty; refusing to write a synthetic store there (choose another path)"
                )
        if existing is not None and not overwrite:
            if existing.get("complete"):
                cls._refuse_complete(url, store, existing, new_attrs)
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
        try:
            self.group.attrs["complete"] = True
        except OSError as exc:
            raise UserError(
                f"cannot mark the synthetic store {self.url} complete: {exc.strerror or exc}; "
                "rerun the same synth.generate command to finish"
            ) from exc


# --------------------------------------------------------------------------- reader


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
        if self.markers[block] == 0:
            return "not marked written"
        s, e = self.block_range(block)
        got = block_checksum(images, self.labels[s:e], self.conditions[s:e], self.seeds[s:e])
        return None if got == self.markers[block] else "does not match its checksum"

    def block_fault(self, block: int) -> str | None:
        """What is wrong with ``block`` when it is re-read whole (``None``: it matches its checksum)."""
        s, e = self.block_range(block)
        try:
            images = self.images[s:e]
        except READ_ERRORS as exc:
            return _unreadable("images", exc)
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
                fault = BlockFault(self.name, k, _unreadable("images", exc))
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
    attrs: dict[str, Any]
    splits: dict[str, SyntheticSplit]
    zarr_store: Store
    root: zarr.Group

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

    @property
    def n_blocks(self) -> int:
        return sum(part.n_blocks for part in self.splits.values())

    def missing_objects(self) -> dict[tuple[str, int], str]:
        """``(split, block) -> reason`` for blocks with a missing or empty object (one listing of the store)."""
        arrays = {name: {a: self.root[f"{name}/{a}"] for a in (*ARRAYS, DONE)} for name in self.splits}
        return _missing_objects(self.zarr_store, arrays, {name: s.block_size for name, s in self.splits.items()})

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
            raise UserError(damage_message(url, [BlockFault(split, k, _unreadable(name, exc))])) from None
    raise UserError(f"synthetic store {url} is damaged: {split}/{name} {_unreadable('is', first)}; {REGENERATE}")


def open_synthetic(url: str | Path, *, check: bool = True) -> SyntheticStore:
    """Open a complete store for reading.

    The small per-image arrays and block markers are read whole; with
    ``check`` the store's objects are listed once and blocks with a missing
    or empty object must still match their checksums (the cheap check of
    the module docstring).

    Raises:
        UserError: nothing there, not a synthetic store, unreadable root
            metadata, an unknown format version, an incomplete store
            (interrupted generation), a missing array, or a damaged block
            (one line naming the store and the first damaged blocks).
    """
    url = str(url)
    try:
        store = make_store(url, read_only=True)
        attrs = _root_attrs(store)
    except FileNotFoundError:
        attrs = None
    except _DamagedRoot as exc:
        raise UserError(
            f"cannot open the synthetic store {url}: its root metadata zarr.json is unreadable ({exc})"
        ) from None
    except (OSError, ValueError, ImportError) as exc:  # unknown protocol, missing backend
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
    for name in (s for s in SPLITS if s in (attrs.get("counts") or {}) or s in root):
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
