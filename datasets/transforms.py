"""MONAI dictionary transforms shared by every image reader.

They act on the sample dicts of :mod:`datasets.sample` (keys ``image`` and,
when present, ``mask``) and end with plain ``torch.float32`` tensors
``[C, H, W]``.

* :func:`load_transform`: reads the file named by ``image`` (a path) into a
  ``[C, H, W]`` array in [0, 1] with :func:`datasets.image_io.read_image`.
* :func:`resize`: centre-crops the largest central square (the longer side
  loses ``(long - short) / 2`` pixels at each end) and resizes it to
  ``resolution x resolution``, so the aspect ratio is kept. Images use
  bilinear interpolation with antialiasing (an area-like low-pass filter when
  shrinking), masks nearest neighbour, so a mask stays binary.
* :func:`train_augment`: the training augmentation of :mod:`datasets.augment`
  (random rotation, scale and shift applied identically to image and mask;
  brightness and gamma for radiographs; horizontal flips for dermoscopy
  only) as a MONAI dictionary transform for one sample. Batches go through
  :class:`datasets.augment.BatchAugment` directly, the same code.

Randomness comes from MONAI's per-transform generator (``R``), which seeds a
``torch.Generator`` per sample: ``set_random_state`` on the composed
transform (``seed=`` in :func:`compose`) makes a sequence of augmentations
reproducible. In a multi-worker ``DataLoader`` each worker
holds a copy of the same generators; use ``monai.data.DataLoader`` or
``worker_init_fn=monai.data.utils.worker_init_fn`` so workers draw
different augmentations.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, MapTransform, Randomizable

from .augment import apply, sample_params
from .image_io import read_image
from .sample import IMAGE, MASK, check_channels

SPATIAL_KEYS: tuple[str, ...] = (IMAGE, MASK)


class LoadImaged(MapTransform):
    """Replace each path under ``keys`` by its decoded ``float32 [C, H, W]`` array in [0, 1]."""

    def __init__(
        self, keys: Sequence[Hashable] | Hashable = IMAGE, channels: int = 1, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = torch.from_numpy(read_image(out[key], self.channels))
        return out


class SquareResized(MapTransform):
    """Centre-crop the largest square and resize it to ``resolution`` (bilinear + antialias; nearest for masks)."""

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        resolution: int,
        nearest_keys: Sequence[Hashable] = (MASK,),
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        if resolution < 1:
            raise ValueError(f"resolution must be positive, not {resolution}")
        self.resolution = int(resolution)
        self.nearest_keys = tuple(nearest_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = square_resize(torch.as_tensor(out[key]), self.resolution, nearest=key in self.nearest_keys)
        return out


def square_resize(image: torch.Tensor, resolution: int, nearest: bool = False) -> torch.Tensor:
    """``[C, H, W]`` -> ``[C, resolution, resolution]``: central square crop, then resize."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[..., top : top + side, left : left + side].float()
    if side == resolution:
        return square.contiguous()
    if nearest:
        return F.interpolate(square[None], size=(resolution, resolution), mode="nearest")[0]
    resized = F.interpolate(
        square[None], size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
    )[0]
    return resized.clamp_(0.0, 1.0)


def load_transform(keys: Sequence[Hashable] | Hashable = IMAGE, channels: int = 1) -> LoadImaged:
    """The loading step: file path -> ``float32 [C, H, W]`` tensor in [0, 1]."""
    return LoadImaged(keys, channels)


def resize(resolution: int, keys: Sequence[Hashable] = SPATIAL_KEYS) -> SquareResized:
    """The resizing step: centre square crop and resize to ``resolution`` (see the module docstring)."""
    return SquareResized(keys, resolution)


def _plain(x: Any) -> torch.Tensor:
    """A plain float32 tensor (MONAI's MetaTensor metadata is not needed by the augmentation)."""
    return torch.as_tensor(x).as_subclass(torch.Tensor).float()


class TrainAugmentd(Randomizable, MapTransform):
    """:mod:`datasets.augment` on one sample: ``keys[0]`` is the image [C, H, W], the other keys masks.

    Masks (e.g. ``mask`` [1, H, W]) follow the image's geometry with
    nearest-neighbour sampling; a sample without the image passes unchanged.
    """

    def __init__(self, channels: int, keys: Sequence[Hashable] = SPATIAL_KEYS) -> None:
        check_channels(channels)
        super().__init__(tuple(keys), allow_missing_keys=True)
        self.channels = channels
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image_key, *mask_keys = self.keys
        if image_key not in out:
            return out
        self.randomize()
        params = sample_params(1, self.channels, torch.Generator().manual_seed(self._seed))
        present = [k for k in mask_keys if k in out]
        masks = [_plain(out[k]) for k in present]
        stacked = torch.cat(masks)[None] if masks else None
        image, stacked = apply(_plain(out[image_key])[None], params, stacked)
        out[image_key] = image[0]
        if stacked is not None:
            out.update(zip(present, torch.split(stacked[0], [len(m) for m in masks]), strict=True))
        return out


def train_augment(channels: int, keys: Sequence[Hashable] = SPATIAL_KEYS) -> TrainAugmentd:
    """The training augmentation for ``channels`` 1 (radiographs) or 3 (dermoscopy); see :mod:`datasets.augment`."""
    return TrainAugmentd(channels, keys)


def compose(
    channels: int,
    resolution: int,
    augment: bool = False,
    seed: int | None = None,
    keys: Sequence[Hashable] = SPATIAL_KEYS,
) -> Compose:
    """Resize, optional training augmentation, then plain ``float32`` tensors (no MONAI metadata).

    The input sample holds decoded arrays (see :func:`load_transform`).
    ``seed`` fixes the augmentation generators.
    """
    steps: list[Any] = [resize(resolution, keys)]
    if augment:
        steps.append(train_augment(channels, keys))
    steps.append(
        EnsureTyped(tuple(keys), data_type="tensor", dtype=torch.float32, track_meta=False, allow_missing_keys=True)
    )
    pipeline = Compose(steps)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline
