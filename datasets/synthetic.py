"""The ``synthetic`` data set: one split of a synthetic store as torch samples.

The store format (schema, layout, writer, opening and integrity checks) is
:mod:`datasets.synthetic_store`; this module turns an opened store into the
project's sample convention (:class:`SyntheticDataset`, registered through
:data:`SPEC`), with the condition vectors turned back into finding vectors
(:func:`conditions_to_findings`). Epochs go through
:class:`datasets.block_loader.BlockLoader` (whole blocks in a shuffled order,
each checked against its checksum as it is read); random access
(``__getitem__``, a ``DataLoader`` with a shuffling sampler) decodes a whole
chunk per image and is the slow path. A damaged store is one error line
naming the store and the block, on open or when the block is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from plumbing.errors import OPTION, DataRoleError, UserError

from .augment import BatchAugment
from .findings import CHEXPERT, NO_FINDING, FindingSchema
from .label_tasks import LabelTask
from .sample import FINDINGS, ID, IMAGE, INDEX, LABEL, Sample
from .spec import DataSetSpec
from .synthetic_store.reader import SyntheticStore, open_synthetic

ENV_VAR = "CXR_SYNTHETIC_ROOT"
DEFAULT_STORE = "synthetic-v{version}-{setting}.zarr"
"""Where ``synth.generate --version V --setting S`` writes its store unless told otherwise (relative to the
working folder), and where the commands that read stores look for it by default."""


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
        """The stored uint8 rows, their labels and row indices as a batch of CPU tensors (no copy of the images)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        ids = [self._id_format.format(int(i)) for i in idx]
        images = torch.from_numpy(np.asarray(rows))
        return {IMAGE: images, LABEL: self.labels[idx], FINDINGS: self.findings[idx], ID: ids, INDEX: idx}

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
            {IMAGE: batch[IMAGE][j], LABEL: int(batch[LABEL][j]), FINDINGS: batch[FINDINGS][j], ID: batch[ID][j],
             INDEX: int(idx[j])}
            for j in range(len(idx))
        ]


def factory(
    root: str | Path | None,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
) -> SyntheticDataset:
    """The registered ``synthetic`` data set: ``root`` is the store (local folder or URL).

    ``task`` may be ``None`` or the store's own task; another task is a
    :class:`UserError` (a store's images were generated for one task).
    No reader options (:func:`datasets.registry.build_dataset` refuses any).
    """
    if root is None:
        raise DataRoleError(f"synthetic: no store given; pass {OPTION} or set {ENV_VAR}")
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
    eval_split="val",
    validation_split="val",
)
