"""The unlabelled images of a pretext step: one registered data set or several, labels unused.

``--data`` names them as ``NAME`` or ``NAME=ROOT`` (a real data set's root,
a synthetic store's path), comma-separated: ``--data chexpert=/data/CheXpert,
synthetic=runs/store.zarr``. Each is read at the step's image size without
augmentation (the tasks make their own views) from its training split;
``--max-images`` keeps a seeded random subset of the concatenation (a
phantom set is generated at that length). All sets must have the same
number of channels. An item is ``{"image": [C, H, W] in [0, 1], "index": i}``,
``i`` its row in the concatenation (ODC's memory bank is indexed by it).
A single synthetic store read whole is returned as it is, so that
:func:`datasets.batches.training_batches` reads it through the block
loader (its batches carry the row index too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from datasets.registry import build_dataset, get_spec
from datasets.sample import IMAGE, INDEX
from datasets.synthetic import SyntheticDataset
from plumbing.errors import DataRoleError, UserError
from plumbing.seeding import generator


@dataclass(frozen=True)
class DataSource:
    name: str
    root: str | None

    def describe(self) -> str:
        return self.name if self.root is None else f"{self.name}={self.root}"


def parse_data(text: str) -> tuple[DataSource, ...]:
    """``"phantom,synthetic=store.zarr"`` as data sources; an unknown name is one error line."""
    sources = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, root = part.partition("=")
        get_spec(name, option="--data")
        sources.append(DataSource(name, root or None))
    if not sources:
        raise UserError("--data names no data set")
    if len(set(sources)) != len(sources):
        raise UserError(f"--data {text!r} names a data set twice")
    return tuple(sources)


class UnlabelledImages(Dataset):
    """Images of several data sets as one, each item with its index (module docstring)."""

    def __init__(self, parts: list[Dataset], rows: torch.Tensor | None) -> None:
        self.images: Dataset = ConcatDataset(parts)
        if rows is not None:
            self.images = Subset(self.images, rows.tolist())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {IMAGE: self.images[index][IMAGE], INDEX: index}


def _build(source: DataSource, image_size: int, max_images: int | None) -> Dataset:
    """The source's training split, cut to ``max_images`` where its reader can cut it (else whole: the
    concatenation is cut afterwards)."""
    spec = get_spec(source.name)
    options = spec.count_options(max_images if spec.count_option is not None else None)
    try:
        return build_dataset(source.name, root=source.root, split="train", task=None, resolution=image_size,
                             augment=False, **options)
    except DataRoleError as exc:
        raise exc.in_role("pretext") from None


def unlabelled_images(
    sources: tuple[DataSource, ...], image_size: int, max_images: int | None, seed: int
) -> tuple[Dataset, int]:
    """The step's images and their channel count (a :class:`UserError` for mixed channels or no images)."""
    channels = {s.describe(): get_spec(s.name).channels for s in sources}
    if len(set(channels.values())) > 1:
        raise UserError(f"--data mixes images of different channel counts: {channels}")
    parts = [_build(s, image_size, max_images) for s in sources]
    if not any(len(p) for p in parts):
        raise UserError(f"--data {','.join(s.describe() for s in sources)} holds no images")
    total = sum(len(p) for p in parts)
    rows = None
    if max_images is not None and total > max_images:
        rows = torch.randperm(total, generator=generator(seed, "max-images"))[:max_images].sort().values
    channel_count = next(iter(channels.values()))
    if rows is None and len(parts) == 1 and isinstance(parts[0], SyntheticDataset):
        return parts[0], channel_count
    return UnlabelledImages(parts, rows), channel_count
