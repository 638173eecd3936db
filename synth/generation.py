"""Generating a versioned synthetic data set (a Zarr store) with a conditional generator, from Python.

``python -m synth.generate`` parses its options into :class:`GenerationSettings`
and calls :func:`generate_store`; a script can do the same::

    loaded = load_generator(DEMO_GENERATOR, torch.device("cpu"))
    generate_store(loaded, "v1-0s.zarr", GenerationSettings(version=1, setting="0s"), torch.device("cpu"))

For a label task (``version`` 1/2/3, ``setting`` 0s/Xs) it draws, per
split, ``per_class x classes`` samples: sample ``i`` has class ``i mod C``,
a condition vector ``c_i`` from :mod:`synth.conditions` (setting 0s: with
Support Devices at the real rate of each class, or cleared with
``devices="clear"``; the store records the choice as ``condition_policy``), a
seed ``s_i = derive_seed(seed, split, i)`` (stored in the ``seeds`` array) and
a latent ``z_i ~ N(0, I)`` drawn from a generator seeded with ``s_i`` alone.
Images come from the generator with constant noise inputs and truncation
``w = w_avg(c_i) + psi (w - w_avg(c_i))`` toward the average w of the sample's
own condition (``truncation_center="condition"``, estimated from 1000 latents
seeded by the condition) or the global average, and are mapped from [-1, 1] to
uint8 by ``round((x + 1) * 127.5)``. Since nothing depends on the batch,
another ``batch_size`` changes no label, condition or seed and pixels only by
floating-point rounding (at most one grey level).

The store is written block by block through
:class:`datasets.synthetic_store.writer.SyntheticStoreWriter`; a run killed at
any moment (or stopped by a full disk) and started again with the same
settings writes only the missing blocks and ends identical to an
uninterrupted run. A resumed store keeps its block size (another
``block_size`` is refused). Run again on a complete store, it refuses, unless
the store's cheap integrity check (:mod:`datasets.synthetic_store.integrity`)
finds damaged blocks: those are marked pending, so running it once more
rewrites them. Last, a contact sheet (:func:`synth.rendering.write_contact_sheet`)
is written beside the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from datasets.findings import SCHEMAS, FindingSchema
from datasets.label_tasks import label_task
from datasets.synthetic_store.format import SPLITS, GeneratorRecord, StoreAttrs, StoreLayout
from datasets.synthetic_store.writer import BlockRows, SyntheticStoreWriter, write_pending_blocks
from plumbing.errors import UserError

from .conditions import ConditionSampler, condition_vectors
from .export import LoadedGenerator
from .rendering import ConditionCenters, render, sample_latents, sample_seeds, write_contact_sheet


@dataclass(frozen=True)
class GenerationSettings:
    """What a store holds besides its generator; the defaults are ``synth.generate``'s.

    ``devices`` is the 0s device policy (:data:`synth.conditions.DEVICE_POLICIES`;
    ``None`` gives ``"empirical"``) and must be ``None`` for setting Xs;
    ``labels_csv`` the label CSV of the Xs (and 0s empirical) conditions,
    ``None`` for the CheXpert or NIH file bundled with torchxrayvision by the
    generator's schema. Per-class counts must be positive and the truncation
    ``psi`` in [0, 2]; other values are one :class:`UserError` when the settings are
    made (``synth.generate`` checks its options first, in the words of its options).
    """

    version: int = 3
    setting: str = "Xs"
    train_per_class: int = 4000
    val_per_class: int = 1000
    seed: int = 0
    truncation: float = 1.0
    truncation_center: str = "condition"
    labels_csv: Path | None = None
    devices: str | None = None

    def __post_init__(self) -> None:
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise UserError(f"a store needs at least one image per class in each split, not {self.train_per_class} "
                            f"training and {self.val_per_class} validation images")
        if not 0.0 <= self.truncation <= 2.0:
            raise UserError(f"the truncation psi must lie in [0, 2], not {self.truncation}")
        if self.setting == "Xs" and self.devices is not None:
            raise UserError("a device policy applies to setting 0s only (Xs draws the finding classes' full "
                            "condition vectors, devices included)")

    @property
    def condition_policy(self) -> str | None:
        """The device policy the conditions follow and the store records: 0s ``devices`` or ``"empirical"``, Xs none."""
        return (self.devices or "empirical") if self.setting == "0s" else None


@dataclass(frozen=True)
class GeneratedStore:
    """What :func:`generate_store` wrote: the store, its images per split and its contact sheet."""

    url: str
    split_sizes: dict[str, int]
    classes: tuple[str, ...]
    contact_sheet: str


def generator_schema(loaded: LoadedGenerator) -> FindingSchema:
    """The finding schema (CheXpert or NIH) whose columns the generator is conditioned on.

    Raises:
        UserError: the generator's condition columns are neither.
    """
    schema = next((s for s in SCHEMAS.values() if list(s.columns) == loaded.condition_columns), None)
    if schema is None or loaded.generator.c_dim != len(loaded.condition_columns):
        raise UserError(
            f"generator {loaded.path} is conditioned on {loaded.generator.c_dim} values {loaded.condition_columns}; "
            "expected the CheXpert (14) or NIH (15) finding columns"
        )
    return schema


def store_attrs(
    loaded: LoadedGenerator, settings: GenerationSettings, schema: FindingSchema, vectors: np.ndarray
) -> StoreAttrs:
    """The root attributes of the store ``settings`` describe, generated by ``loaded`` from ``vectors``."""
    task = label_task(settings.version, settings.setting)
    per_class = {"train": settings.train_per_class, "val": settings.val_per_class}
    source = str(settings.labels_csv) if settings.labels_csv else f"torchxrayvision bundled {schema.name} labels"
    return StoreAttrs(
        version=task.version,
        setting=task.setting,
        classes=task.classes,
        counts={s: {c: per_class[s] for c in task.classes} for s in SPLITS},
        resolution=loaded.generator.img_resolution,
        c_dim=len(schema.columns),
        condition_columns=tuple(schema.columns),
        generator=GeneratorRecord(sha256=loaded.sha256, config=loaded.network, training=loaded.training,
                                  trained_on_phantoms=loaded.trained_on_phantoms),
        condition_source={"file": source, 
                          "sha256": hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()},
        truncation_center=settings.truncation_center,
        seed=settings.seed,
        truncation=settings.truncation,
        condition_policy=settings.condition_policy,
    )


def generate_store(
    loaded: LoadedGenerator,
    out: str | Path,
    settings: GenerationSettings,
    device: torch.device,
    *,
    batch_size: int = 64,
    block_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> GeneratedStore:
    """Write (or resume) the store ``settings`` describe at ``out`` (a local path or fsspec URL) and its contact sheet.

    ``batch_size`` images go through the generator at once; ``block_size``
    (a power of two) is the store's images per block, ``None`` for the
    store's own when resuming, else the default by resolution
    (:meth:`StoreLayout.for_resolution`). ``progress`` shows one bar per split.

    Raises:
        UserError: the generator stopped growing early or is conditioned on
            other columns than a finding schema's; the store cannot be written
            there, is complete (without ``overwrite``), or holds an interrupted
            generation with other settings or block size; a write fails (the
            block stays pending: the same call resumes).
    """
    loaded.check_fully_grown()
    schema = generator_schema(loaded)
    task = label_task(settings.version, settings.setting)
    vectors = condition_vectors(schema.name, settings.labels_csv)
    sampler = ConditionSampler(task, schema, vectors, devices=settings.condition_policy)
    attrs = store_attrs(loaded, settings, schema, vectors)
    layout = None  # the writer's default for a new store, the store's own for a resumed one
    if block_size is not None:
        chunk = min(StoreLayout.for_resolution(attrs.resolution).chunk_images, block_size)
        layout = StoreLayout(chunk_images=chunk, block_size=block_size)
    url = str(out)
    try:
        writer = SyntheticStoreWriter.open(url, attrs=attrs, overwrite=overwrite, layout=layout)
    except (OSError, ValueError, ImportError) as exc:  # fsspec: unknown protocol (ValueError), missing backend
        raise UserError(f"cannot write the store {url}: {getattr(exc, 'strerror', None) or exc}") from exc
    centers = ConditionCenters(loaded, settings.seed, device) if settings.truncation_center == "condition" else None
    for split in SPLITS:
        rows = partial(_block_rows, loaded, sampler, settings, split, batch_size, device, centers)
        size, todo = attrs.split_sizes[split], writer.pending_images(split)
        with tqdm(total=size, initial=size - todo, desc=split, unit="img", disable=not progress or not todo) as bar:
            write_pending_blocks(writer, split, rows, progress=bar.update)
    writer.finish()
    return GeneratedStore(url, attrs.split_sizes, task.classes, write_contact_sheet(url))


def _block_rows(
    loaded: LoadedGenerator,
    sampler: ConditionSampler,
    settings: GenerationSettings,
    split: str,
    batch_size: int,
    device: torch.device,
    centers: ConditionCenters | None,
    start: int,
    stop: int,
) -> BlockRows:
    """Rows ``[start, stop)`` of ``split``: images rendered from the rows' seeds and conditions, labels, conditions,
    seeds."""
    idx = np.arange(start, stop)
    conditions = sampler.conditions(settings.seed, split, idx)
    seeds = sample_seeds(settings.seed, split, idx)
    z = sample_latents(seeds, loaded.generator.z_dim)
    images = render(loaded, z, torch.from_numpy(conditions), settings.truncation, batch_size, device, centers)
    return images, sampler.labels(idx), conditions, seeds
