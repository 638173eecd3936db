"""Lung masks for the attention score: exact ones from phantoms, or a folder of mask images for real data.

Phantom samples carry their exact lung mask (``mask`` in the sample
convention). For real data, ``--lung-masks DIR`` holds one mask image per
image, matched by the sample's ``id``: ``DIR/<id>`` with the image's
extension replaced by ``.png`` (ids may hold sub-folders), else
``DIR/<file name of id>.png``. A mask must have the size of the image file
it belongs to (when the data set knows the file); it is then cropped and
resized exactly as the image is (:func:`datasets.transforms.square_resize`,
nearest neighbour), and pixels above half the maximum grey level are lung.
A missing mask or one of the wrong size is one :class:`UserError` line.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from datasets.sample import ID, MASK
from datasets.transforms import square_resize
from plumbing.errors import UserError


def mask_candidates(folder: Path, image_id: str) -> list[Path]:
    """Where the mask of ``image_id`` may lie in ``folder``, in the order they are tried."""
    rel = PurePosixPath(image_id)
    return [folder / rel.with_suffix(".png"), folder / f"{rel.stem}.png"]


def read_mask(folder: Path, image_id: str, resolution: int, image_size: tuple[int, int] | None) -> torch.Tensor:
    """The binary lung mask ``[1, resolution, resolution]`` of ``image_id`` from ``folder``."""
    candidates = mask_candidates(folder, image_id)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"no lung mask for image {image_id} in {folder} (looked for "
                        f"{' and '.join(str(p.relative_to(folder)) for p in candidates)})")
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.float32)
    except OSError as exc:
        raise UserError(f"cannot read lung mask {path}: {exc}") from None
    if image_size is not None and grey.shape[::-1] != image_size:
        raise UserError(f"lung mask {path} is {grey.shape[1]}x{grey.shape[0]} px but its image is "
                        f"{image_size[0]}x{image_size[1]} px")
    binary = torch.from_numpy((grey > grey.max() / 2).astype(np.float32))[None] if grey.max() > 0 else \
        torch.zeros((1, *grey.shape))
    return square_resize(binary, resolution, nearest=True)


def _image_size(dataset: Any, index: int) -> tuple[int, int] | None:
    records = getattr(dataset, "records", None)
    if records is None:
        return None
    path = str(records.paths[index])
    if "://" in path:
        return None
    with Image.open(path) as img:
        return img.size


class MaskSource:
    """The lung mask of each sample: the sample's own, or one read from ``folder``."""

    def __init__(self, dataset: Any, name: str, folder: Path | None, resolution: int) -> None:
        self.dataset, self.folder, self.resolution = dataset, folder, resolution
        if folder is not None and not folder.is_dir():
            raise UserError(f"--lung-masks {folder} is not a folder")
        self.own = folder is None
        if self.own and MASK not in dataset[0]:
            raise UserError(f"{name} images come without lung masks; pass --lung-masks DIR "
                            "(one mask image per image id)")

    def masks(self, indices: list[int], samples: list[dict[str, Any]]) -> torch.Tensor:
        if self.own:
            return torch.stack([s[MASK] for s in samples])
        assert self.folder is not None
        return torch.stack([
            read_mask(self.folder, str(s[ID]), self.resolution, _image_size(self.dataset, i))
            for i, s in zip(indices, samples, strict=True)
        ])
