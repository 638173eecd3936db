"""The synthetic store format (Zarr 3), version 1: root attributes, arrays, blocks, layout and codecs.

Root attributes
---------------
The root group's attributes, read and written as :class:`StoreAttrs`:
``format`` (``"cxr-synthetic"``), ``format_version`` (1), ``version``
(1/2/3), ``setting`` (``"0s"``/``"Xs"``), ``classes``, ``counts``
(``{"train": {class: n}, "val": {...}}``; its keys are the splits the store
holds), ``resolution``, ``c_dim``, ``condition_columns`` (finding schema
columns of the condition vectors), ``generator`` (:class:`GeneratorRecord`:
``{"sha256", "config", "training", "trained_on_phantoms"}``, the weights'
hash, network configuration, training record and whether it learned from
phantoms), ``seed``, ``truncation``, ``truncation_center``,
``condition_source`` (``{"file", "sha256"}`` of the finding vectors the
conditions are drawn from), ``condition_policy`` (setting ``0s`` only:
``"empirical"``, conditions carry Support Devices at the real rate of each
class, or ``"clear"``, the non-finding columns are 0; a 0s store without the
key predates it and is ``"clear"``; see :mod:`synth.conditions`), ``created``
(ISO time), ``library_versions`` (``{torch, zarr, numpy, project}``) and
``complete`` (``False`` until every block is written and verified).

Arrays
------
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

Layout policy
-------------
zarr pays a fixed cost per chunk read, so several images per chunk and
contiguous block reads: ``chunk_images`` is the largest power of two with at
most 1 MiB of pixels per chunk (256 at 64 px, 64 at 128 px, 16 at 256 px, 4 at
512 px, 1 at 1024 px); ``block_size`` the largest power of two with at most
16 MiB per block, between ``chunk_images`` and 1024 (1024 at <= 128 px, 256 at
256 px, 64 at 512 px). Measured with ``bench.read_store`` (4096 noisy images
at 64 px, one core): the block loader reads 82-88k images/s with 1 MiB or
4 MiB chunks alike, while random access (one chunk decoded per image) is twice
as fast with 1 MiB chunks (425 against 198 images/s): hence 1 MiB.

Image codec
-----------
Blosc with lz4 (level 5) after bit shuffling. Generated radiographs carry
pixel noise that byte-oriented compressors barely reduce (zstd level 3 keeps
0.87-0.93 of the raw size); bit shuffling separates the smooth high bit planes
from the noisy low ones, so lz4 keeps 0.81 of noisy 256 px test images and
decodes them about as fast as zstd level 3 does (one core: 65-90 us per image
against 83 us; a plain copy takes 13 us). Stores written with another codec
(format version 1 allows any) read the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from plumbing.config import dataclass_from_dict

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

ARRAYS: dict[str, str] = {"images": "uint8", "labels": "int64", "conditions": "float32", "seeds": "int64"}
DONE = "block_done"
ZSTD_LEVEL = 3
MAX_CHUNK_BYTES = 1 << 20
MAX_BLOCK_BYTES = 16 << 20
MAX_BLOCK_IMAGES = 1024


# --------------------------------------------------------------------------- root attributes


def _present_fields(record: Any) -> dict[str, Any]:
    """The fields of a dataclass ``record`` in field order, leaving out optional ones (default ``None``) that are None.

    A store has always left such keys out (an Xs store has no ``condition_policy``), so they are not written as null.
    """
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is None and f.default is None:
            continue
        out[f.name] = value.to_dict() if isinstance(value, GeneratorRecord) else value
    return out


@dataclass(frozen=True, kw_only=True)
class GeneratorRecord:
    """The root attribute ``generator``: the weights a store was generated with.

    ``config`` is the network configuration, ``training`` the training record
    (``data``, ``data_length``, ``balance_task``, ``kimg_done``, ...; see
    :mod:`synth.export`); ``trained_on_phantoms`` is ``None`` where the record
    does not say.
    """

    sha256: str
    config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    trained_on_phantoms: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return _present_fields(self)


@dataclass(frozen=True, kw_only=True)
class StoreAttrs:
    """The root attributes of a store (see "Root attributes" in the module docstring), as one typed record.

    A generator fills in the content fields; :class:`~datasets.synthetic_store.writer.SyntheticStoreWriter`
    sets ``format``, ``format_version`` and ``complete`` and fills ``created``
    and ``library_versions`` when they are ``None``. Optional fields that are
    ``None`` are not written (:meth:`to_dict`). The mappings inside are plain
    dicts: treat them as read-only.
    """

    version: int
    setting: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    resolution: int
    c_dim: int
    condition_columns: tuple[str, ...]
    generator: GeneratorRecord
    condition_source: dict[str, str] | None = None
    truncation_center: str | None = None
    seed: int
    truncation: float
    condition_policy: str | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    complete: bool = False
    created: str | None = None
    library_versions: dict[str, str] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreAttrs:
        """The record of root attributes ``data``, read strictly (:func:`plumbing.config.dataclass_from_dict`).

        Raises:
            UserError: ``data`` or its ``generator`` is not a mapping, holds
                unknown keys or lacks a required one (the message names the
                ``root attribute record`` or the ``generator record``).
        """
        if not isinstance(data, Mapping):
            return dataclass_from_dict(cls, data, "root attribute record")  # refuses it
        fields = dict(data)
        if "generator" in fields:
            fields["generator"] = dataclass_from_dict(GeneratorRecord, fields["generator"], "generator record")
        for key in ("classes", "condition_columns"):
            if isinstance(fields.get(key), list):
                fields[key] = tuple(fields[key])
        return dataclass_from_dict(cls, fields, "root attribute record")

    def to_dict(self) -> dict[str, Any]:
        """The attributes as they read back from JSON, in field order, optional ``None`` fields left out."""
        return json_normal(_present_fields(self))

    @property
    def split_sizes(self) -> dict[str, int]:
        """Images per split: the sum of each split's ``counts``."""
        return {split: sum(per_class.values()) for split, per_class in self.counts.items()}


def json_normal(value: Any) -> Any:
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
    norm = json_normal(dict(attrs))
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


# --------------------------------------------------------------------------- blocks and layout


def block_checksum(images: np.ndarray, labels: np.ndarray, conditions: np.ndarray, seeds: np.ndarray) -> int:
    """``1 + crc32`` over the raw bytes of one block's rows (never 0, the pending marker)."""
    crc = 0
    for part in (images, labels, conditions, seeds):
        crc = zlib.crc32(np.ascontiguousarray(part).data, crc)
    return crc + 1


def n_blocks(n: int, block_size: int) -> int:
    """Blocks of ``block_size`` rows that hold ``n`` rows (the last may hold fewer)."""
    return -(-n // block_size)


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
        """The default layout for square ``resolution`` px uint8 images ("Layout policy" in the module docstring)."""
        pixels = resolution * resolution
        chunk = min(MAX_BLOCK_IMAGES, _floor_pow2(MAX_CHUNK_BYTES / pixels))
        block = min(MAX_BLOCK_IMAGES, max(chunk, _floor_pow2(MAX_BLOCK_BYTES / pixels)))
        return cls(chunk_images=chunk, block_size=block)
