"""Memorisation: how close synthetic images come to the images their generator was trained on (pure functions).

With synthetic points ``F_j`` and training points ``T_i`` (features, or
pixels at a low resolution: :func:`pixel_vectors`):

* ``d_j = min_i |F_j - T_i|``: each synthetic image's distance to its nearest
  training image;
* ``t_i = min_{i' != i} |T_i - T_i'|``: the training images' own
  nearest-neighbour distances, the scale a fresh draw from the training
  distribution lands at;
* threshold ``tau = factor * q(t)``, ``q`` the ``quantile`` (default 1%) of the
  ``t_i``; a synthetic image with ``d_j < tau`` is flagged as a near-copy:
  it lies closer to a training image than all but the closest 1% of training
  images lie to each other, by the margin ``factor`` (default 0.5). A low
  quantile rather than the minimum keeps exact duplicates inside the training
  set from setting the threshold to 0.

``ratio = median(d) / median(t)`` summarises the whole set: about 1 for
images as new as fresh draws, well below 1 when the generator reproduces its
training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evaluate.quality.distances import nearest_neighbours

COPY_FACTOR = 0.5
COPY_QUANTILE = 0.01
PIXEL_SIZE = 16


@dataclass
class Memorisation:
    distances: torch.Tensor
    """``d_j`` ``[M]``."""
    nearest: torch.Tensor
    """Index of each synthetic point's nearest training point ``[M]``."""
    training_distances: torch.Tensor
    """``t_i`` ``[N]``."""
    threshold: float
    flagged: torch.Tensor
    """bool ``[M]``: ``d_j < threshold``."""

    @property
    def ratio(self) -> float:
        return float(self.distances.median() / self.training_distances.median().clamp(min=1e-12))


def pixel_vectors(images: torch.Tensor, size: int = PIXEL_SIZE) -> torch.Tensor:
    """uint8 images ``[N, C, r, r]`` -> float64 ``[N, C size^2]``: area-averaged to ``size x size``, in [0, 1]."""
    x = images.to(torch.float64) / 255.0
    return F.adaptive_avg_pool2d(x, size).flatten(1)


def memorisation(
    synthetic: torch.Tensor, training: torch.Tensor, *, factor: float = COPY_FACTOR, quantile: float = COPY_QUANTILE
) -> Memorisation:
    """Nearest training point of every synthetic point and the near-copy flags (module docstring)."""
    distances, nearest = nearest_neighbours(synthetic, training)
    own, _ = nearest_neighbours(training, training, exclude_self=True)
    threshold = factor * float(torch.quantile(own, quantile))
    return Memorisation(distances, nearest, own, threshold, distances < threshold)
