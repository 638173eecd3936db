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
* :func:`train_augment`: a random affine applied identically to image and
  mask (rotation uniform in +-10 degrees, isotropic scale uniform in
  [0.9, 1.1], translation uniform in +-5 % of the side, zero padding), then

  - ``channels == 1`` (radiographs): brightness ``x * (1 + a)``,
    ``a ~ U(-0.1, 0.1)``, and contrast by a gamma ``g ~ U(0.8, 1.25)`` applied
    between the image's own minimum and maximum, each with probability 0.5,
    then clipping to [0, 1]. No flips: a radiograph's left and right are
    anatomy (heart on the patient's left).
  - ``channels == 3`` (dermoscopy): horizontal flip with probability 0.5.

Randomness comes from MONAI's per-transform generators: ``set_random_state``
on the composed transform (``seed=`` in :func:`compose`) makes a sequence of
augmentations reproducible. In a multi-worker ``DataLoader`` each worker
holds a copy of the same generators; use ``monai.data.DataLoader`` or
``worker_init_fn=monai.data.utils.worker_init_fn`` so workers draw
different augmentations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambdad,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
)

from .image_io import read_image
from .sample import IMAGE, MASK

SPATIAL_KEYS: tuple[str, ...] = (IMAGE, MASK)
ROTATION_DEG = 10.0
SCALE_RANGE = 0.1
TRANSLATE_FRACTION = 0.05
BRIGHTNESS_RANGE = 0.1
GAMMA_RANGE = (0.8, 1.25)


class LoadImaged(MapTransform):
    """Replace each path under ``keys`` by its decoded ``float32 [C, H, W]`` array in [0, 1]."""

    def __init__(self, keys: Sequence[Hashable] | Hashable = IMAGE, channels: int = 1, allow_missing_keys: bool = False):
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
    resized = F.interpolate(square[None], size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)[0]
    return resized.clamp_(0.0, 1.0)


def load_transform(keys: Sequence[Hashable] | Hashable = IMAGE, channels: int = 1) -> LoadImaged:
    """The loading step: file path -> ``float32 [C, H, W]`` tensor in [0, 1]."""
    return LoadImaged(keys, channels)


def resize(resolution: int, keys: Sequence[Hashable] = SPATIAL_KEYS) -> SquareResized:
    """The resizing step: centre square crop and resize to ``resolution`` (see the module docstring)."""
    return SquareResized(keys, resolution)


def train_augment(channels: int, resolution: int, keys: Sequence[Hashable] = SPATIAL_KEYS) -> Compose:
    """The training augmentations for ``channels`` 1 (radiographs) or 3 (dermoscopy); see the module docstring."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    keys = tuple(keys)
    modes = tuple("nearest" if k == MASK else "bilinear" for k in keys)
    shift = TRANSLATE_FRACTION * resolution
    steps: list[Any] = [
        RandAffined(
            keys,
            prob=1.0,
            rotate_range=math.radians(ROTATION_DEG),
            scale_range=(SCALE_RANGE, SCALE_RANGE),
            translate_range=(shift, shift),
            mode=modes,
            padding_mode="zeros",
            allow_missing_keys=True,
        )
    ]
    if channels == 1:
        steps += [
            RandScaleIntensityd(IMAGE, factors=BRIGHTNESS_RANGE, prob=0.5),
            RandAdjustContrastd(IMAGE, prob=0.5, gamma=GAMMA_RANGE),
        ]
    else:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=1, allow_missing_keys=True))
    steps.append(Lambdad(IMAGE, func=functools.partial(torch.clamp, min=0.0, max=1.0)))
    return Compose(steps)


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
        steps.append(train_augment(channels, resolution, keys))
    steps.append(EnsureTyped(tuple(keys), data_type="tensor", dtype=torch.float32, track_meta=False, allow_missing_keys=True))
    pipeline = Compose(steps)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline

