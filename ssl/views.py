"""Views of a batch for the pretext tasks, made on the batch's device in a few tensor operations.

Every random draw comes from a ``torch.Generator`` on the CPU (a seed gives the
same views on any device); the images are ``[B, C, H, W]`` in ``[0, 1]`` with
``C`` 1 (radiographs) or 3 (dermoscopy).

- :func:`resized_crops`: a random resized crop per image (area fraction
  ``s ~ U(scale)``, aspect ``r`` log-uniform in ``ratio``; the crop is
  ``sqrt(s r)`` wide and ``sqrt(s / r)`` high as fractions of the side, at most
  1, placed uniformly inside the image) resampled bilinearly to ``size``
  pixels through one affine sampling grid for the whole batch; with
  ``flip`` (RGB only: a radiograph's left and right are anatomy) the crop is
  mirrored with probability 0.5.
- :func:`intensity_jitter`: colour jitter reduced to intensity, with
  probability ``p`` per image: brightness ``x <- x b``, ``b ~ U(1 - a, 1 + a)``,
  then contrast about the image mean ``x <- (x - mu) c + mu``,
  ``c ~ U(1 - a, 1 + a)``, clipped to ``[0, 1]``.
- :func:`random_grayscale`: RGB images turned to their luma
  ``0.299 R + 0.587 G + 0.114 B`` with probability ``p`` (radiographs
  unchanged).
- :func:`gaussian_blur`: with probability ``p`` per image a Gaussian blur of
  ``sigma ~ U(0.1, 2.0) * size / 224`` pixels (the reference's range at 224 px,
  scaled with the image) by a separable per-image kernel (one grouped
  convolution per axis).
- :func:`rotations`: the four copies rotated by 0, 90, 180 and 270 degrees and
  their labels 0-3.
- :func:`location_patches`: the 3 x 3 grid of Relative Location - a patch
  of ``64/85`` of the cell side at a random position inside each cell; each
  of the 8 outer patches paired with the centre patch, labelled by its
  position 0-7 (row-major, centre skipped).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REFERENCE_SIZE = 224
BLUR_SIGMA = (0.1, 2.0)
PATCH_FRACTION = 64 / 85
GRID = 3


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))


def crop_matrices(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """``[n, 2, 3]`` sampling maps (output to input, normalised coordinates) of random resized crops."""
    area = _uniform(n, *scale, generator)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1.0 - width) * (2.0 * torch.rand(n, generator=generator) - 1.0)
    cy = (1.0 - height) * (2.0 * torch.rand(n, generator=generator) - 1.0)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    matrix = torch.zeros(n, 2, 3)
    matrix[:, 0, 0], matrix[:, 0, 2] = width * mirror, cx
    matrix[:, 1, 1], matrix[:, 1, 2] = height, cy
    return matrix


def resized_crops(
    images: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator, *,
    ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = False,
) -> torch.Tensor:
    """One random resized crop of every image, ``[B, C, size, size]`` (module docstring)."""
    b, c = images.shape[:2]
    matrix = crop_matrices(b, scale, ratio, flip and c == 3, generator).to(images.device, images.dtype)
    grid = F.affine_grid(matrix, [b, c, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity_jitter(images: torch.Tensor, p: float, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness then contrast, each factor in ``[1 - amount, 1 + amount]``, on a share ``p`` of the images."""
    b = images.shape[0]
    apply = torch.rand(b, generator=generator) < p
    brightness = torch.where(apply, _uniform(b, 1 - amount, 1 + amount, generator), torch.ones(b))
    contrast = torch.where(apply, _uniform(b, 1 - amount, 1 + amount, generator), torch.ones(b))
    x = images * _per_image(brightness, images)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * _per_image(contrast, images) + mean).clamp(0.0, 1.0)


LUMA = (0.299, 0.587, 0.114)


def random_grayscale(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """RGB images replaced by their luma on all three channels with probability ``p``; one channel: unchanged."""
    b, c = images.shape[:2]
    apply = torch.rand(b, generator=generator) < p
    if c != 3:
        return images
    luma = (images * torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)).sum(1, True)
    return torch.where(_per_image(apply, images).bool(), luma.expand_as(images), images)


def gaussian_blur(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian blur of a random width on a share ``p`` of the images (module docstring)."""
    b, c, h, w = images.shape
    apply = torch.rand(b, generator=generator) < p
    factor = max(h, w) / REFERENCE_SIZE
    sigma = _uniform(b, *BLUR_SIGMA, generator) * factor
    radius = max(1, math.ceil(3 * BLUR_SIGMA[1] * factor))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).float().expand(b, -1)
    kernel = torch.where(apply[:, None], kernel, identity).to(images.device, images.dtype)
    weight = kernel.repeat_interleave(c, dim=0)  # [B*C, K]: one kernel per image, for each of its channels
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), weight[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), weight[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[4B, C, H, W]``: every image at 0, 90, 180, 270 degrees (in that order per block), and labels ``[4B]``."""
    b = images.shape[0]
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(b)
    return rotated, labels


def patch_size(image_size: int) -> int:
    """Side of a Relative Location patch: ``64/85`` of a grid cell (at least 4 pixels)."""
    return max(4, round(image_size // GRID * PATCH_FRACTION))


def location_patches(
    images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre patches ``[8B, C, p, p]``, the outer patches paired with them, and their positions ``[8B]`` (0-7).

    Row ``i * B + j`` pairs image ``j``'s centre patch with its outer patch of
    position ``i``. Each patch lies at a random offset inside its cell of the
    ``3 x 3`` grid over the image's central ``3 * (side // 3)`` square.
    """
    b, c, h, w = images.shape
    side = min(h, w)
    cell = side // GRID
    p = patch_size(side)
    top, left = (h - GRID * cell) // 2, (w - GRID * cell) // 2
    slack = cell - p
    offsets = torch.randint(0, slack + 1, (GRID * GRID, b, 2), generator=generator)
    rows = torch.arange(GRID * GRID) // GRID
    cols = torch.arange(GRID * GRID) % GRID
    y0 = (top + rows[:, None] * cell + offsets[..., 0]).to(images.device)  # [9, B]
    x0 = (left + cols[:, None] * cell + offsets[..., 1]).to(images.device)
    span = torch.arange(p, device=images.device)
    ys = (y0[..., None] + span)[..., :, None]  # [9, B, p, 1]
    xs = (x0[..., None] + span)[..., None, :]  # [9, B, 1, p]
    batch = torch.arange(b, device=images.device)[None, :, None, None]
    patches = images.permute(0, 2, 3, 1)[batch, ys, xs]  # [9, B, p, p, C]
    patches = patches.permute(0, 1, 4, 2, 3)  # [9, B, C, p, p]
    centre = GRID * GRID // 2
    outer = [k for k in range(GRID * GRID) if k != centre]
    neighbours = patches[outer].reshape(8 * b, c, p, p)
    centres = patches[centre].expand(8, -1, -1, -1, -1).reshape(8 * b, c, p, p)
    labels = torch.arange(8, device=images.device).repeat_interleave(b)
    return centres, neighbours, labels
