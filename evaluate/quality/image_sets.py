"""Image sets held in memory for the quality report: uint8 images with their classes, and their content key.

A quality report reads each of its image sets once (a store's split, a
reference's held-out or training images, a generator's training data) into an
:class:`ImageSet`: uint8 grey levels ``round(255 x)`` of the readers' float
images at one resolution, and the class of every image. The features, the
pixel-space distances and the classifiers of the report all work from these
tensors, so nothing is read twice; the content key (SHA-256 of the pixels)
names their cached features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from datasets.sample import IMAGE, LABEL, to_uint8
from plumbing.errors import UserError
from plumbing.seeding import numpy_rng


@dataclass
class ImageSet:
    """``images`` uint8 ``[N, C, r, r]`` and ``labels`` int64 ``[N]`` (class indices of the task), described.

    ``groups``: the patient (or study) of every image where the reader knows it.
    """

    description: str
    images: torch.Tensor
    labels: torch.Tensor
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def content_key(self) -> str:
        """SHA-256 of the shape and pixels: equal for equal images, whatever set they were read from."""
        h = hashlib.sha256(str(tuple(self.images.shape)).encode())
        h.update(np.ascontiguousarray(self.images.numpy()).tobytes())
        return h.hexdigest()

    def subset(self, rows: np.ndarray | Sequence[int], description: str) -> ImageSet:
        rows = np.asarray(rows, dtype=np.int64)
        index = torch.as_tensor(rows)
        groups = None if self.groups is None else self.groups[rows]
        return ImageSet(description, self.images[index], self.labels[index], groups)

    def of_class(self, c: int) -> torch.Tensor:
        """Row indices of class ``c``."""
        return torch.nonzero(self.labels == c).flatten()


class InMemoryImages(Dataset):
    """An :class:`ImageSet` as a data set of samples (``image`` float ``[C, r, r]`` in [0, 1], ``label``)."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images
        self.labels = images.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {IMAGE: self.images.images[index].float() / 255.0, LABEL: int(self.images.labels[index])}


def balanced_rows(labels: torch.Tensor, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` rows of every class (a seeded choice; all of a class that has fewer), in row order."""
    rng = numpy_rng(seed, "balanced rows")
    labels = np.asarray(labels)
    chosen = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        chosen.append(rows if len(rows) <= per_class else rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def read_image_set(
    dataset: Dataset, description: str, *, rows: np.ndarray | None = None, batch_size: int = 128,
    workers: int = 0, progress: bool = True,
) -> ImageSet:
    """Read ``dataset`` (or its ``rows``) into memory as uint8 images and their classes, with a progress bar."""
    part = dataset if rows is None else Subset(dataset, np.asarray(rows).tolist())
    if len(part) == 0:
        raise UserError(f"{description}: no images")
    images, labels = [], []
    loader = DataLoader(part, batch_size=batch_size, num_workers=workers)
    for batch in tqdm(loader, desc=description, unit="batch", disable=not progress, leave=False):
        images.append(to_uint8(batch[IMAGE]))
        labels.append(torch.as_tensor(batch[LABEL], dtype=torch.long))
    return ImageSet(description, torch.cat(images), torch.cat(labels))


def class_counts(images: ImageSet, classes: Sequence[str]) -> dict[str, int]:
    counts = torch.bincount(images.labels.clamp(min=0), minlength=len(classes))
    return {name: int(counts[c]) for c, name in enumerate(classes)}

