"""Distances between two sets of image features (pure functions): Frechet distance, precision/recall, density/coverage.

With real features ``R`` (``[N, D]``) and synthetic features ``F`` (``[M, D]``):

* **Frechet distance** between Gaussians fitted to the two sets (means
  ``mu``, covariances ``S`` with ``N - 1`` in the denominator, in float64)::

      FD = |mu_R - mu_F|^2 + tr(S_R) + tr(S_F) - 2 tr((S_R S_F)^(1/2))

  with ``tr((S_R S_F)^(1/2)) = sum_i sqrt(lambda_i)``, ``lambda_i`` the
  eigenvalues of the symmetric ``S_R^(1/2) S_F S_R^(1/2)`` (negative rounding
  errors clipped at 0). It is biased upwards at small ``N``: read it against
  the distance between two disjoint halves of the real set of the same size.
* **k-NN radius** of a point: the distance to its ``k``-th nearest neighbour in
  its own set, itself excluded.
* **Precision / recall** (Kynkaanniemi et al. 2019): precision is the share of
  synthetic points strictly inside the k-NN ball of some real point; recall is
  the share of real points strictly inside the ball of some synthetic point.
* **Nearest neighbour** of a query point: the closest point of another set
  (or of its own set, itself excluded).
* **Density / coverage** (Naeem et al. 2020): density =
  ``(1 / (k M)) sum_j #{i : |F_j - R_i| < r_i}`` (real radii ``r_i``);
  coverage = the share of real points whose nearest synthetic point lies
  strictly inside their own ball.

Distances are Euclidean, computed in row chunks so memory stays at
``chunk x N`` (no full pairwise matrix).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from plumbing.errors import UserError
from plumbing.seeding import numpy_rng

DEFAULT_K = 5
CHUNK = 1024


def _features(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(f"{name} must be [N, D] features with N >= 2, got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def feature_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (denominator ``N - 1``) of features ``[N, D]``, in float64."""
    x = _features(x, "features")
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(s)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (module docstring), clipped at 0."""
    mu1, mu2, cov1, cov2 = (t.to(torch.float64) for t in (mu1, mu2, cov1, cov2))
    root = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(root @ cov2 @ root).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(float(value), 0.0)


def frechet_between(x: torch.Tensor, y: torch.Tensor) -> float:
    """The Frechet distance between the Gaussians of feature sets ``x`` and ``y``."""
    return frechet_distance(*feature_statistics(x), *feature_statistics(y))


def bootstrap_interval(
    statistic: Callable[[torch.Tensor, torch.Tensor], float], x: torch.Tensor, y: torch.Tensor, *,
    rounds: int = 100, level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(x*, y*)`` over ``rounds`` resamplings of both sets with replacement."""
    if rounds < 2 or not 0 < level < 1:
        raise UserError("a bootstrap needs at least 2 rounds and a level in (0, 1)")
    rng = numpy_rng(seed, "bootstrap")
    def resample(z: torch.Tensor) -> torch.Tensor:
        return z[torch.from_numpy(rng.integers(0, len(z), len(z)))]

    values = [statistic(resample(x), resample(y)) for _ in range(rounds)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _distance_chunks(a: torch.Tensor, b: torch.Tensor, chunk: int) -> Iterator[tuple[slice, torch.Tensor]]:
    for start in range(0, len(a), chunk):
        rows = slice(start, min(start + chunk, len(a)))
        yield rows, torch.cdist(a[rows], b)


def nearest_neighbours(
    query: torch.Tensor, base: torch.Tensor, *, exclude_self: bool = False, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance ``[M]`` and index ``[M]`` of every query point's nearest point of ``base``.

    ``exclude_self``: ``query`` is ``base`` and a point is not its own neighbour
    (the leave-one-out nearest-neighbour distances of a set).
    """
    query, base = _features(query, "query points"), _features(base, "base points")
    distances = torch.empty(len(query), dtype=torch.float64)
    indices = torch.empty(len(query), dtype=torch.long)
    for rows, d in _distance_chunks(query, base, chunk):
        if exclude_self:
            own = torch.arange(rows.start, rows.stop)
            d[own - rows.start, own] = math.inf
        distances[rows], indices[rows] = d.min(dim=1)
    return distances, indices


def knn_radii(x: torch.Tensor, k: int = DEFAULT_K, chunk: int = CHUNK) -> torch.Tensor:
    """Distance of every point of ``x`` ``[N, D]`` to its ``k``-th nearest other point, ``[N]``."""
    x = _features(x, "features")
    if not 1 <= k < len(x):
        raise UserError(f"k = {k} nearest neighbours need more than {k} points; the set has {len(x)}")
    radii = torch.empty(len(x), dtype=torch.float64)
    for rows, d in _distance_chunks(x, x, chunk):
        radii[rows] = d.kthvalue(k + 1, dim=1).values  # the smallest is the point itself
    return radii


def _inside_counts(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For every point, how many of the balls ``(centres, radii)`` hold it strictly inside."""
    counts = torch.empty(len(points), dtype=torch.long)
    for rows, d in _distance_chunks(points, centres, chunk):
        counts[rows] = (d < radii[None]).sum(dim=1)
    return counts


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = DEFAULT_K, chunk: int = CHUNK
) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` (Kynkaanniemi et al. 2019, module docstring)."""
    real, fake = _features(real, "real features"), _features(fake, "synthetic features")
    precision = (_inside_counts(fake, real, knn_radii(real, k, chunk), chunk) > 0).double().mean()
    recall = (_inside_counts(real, fake, knn_radii(fake, k, chunk), chunk) > 0).double().mean()
    return float(precision), float(recall)


def density_coverage(
    real: torch.Tensor, fake: torch.Tensor, k: int = DEFAULT_K, chunk: int = CHUNK
) -> tuple[float, float]:
    """(density, coverage) of ``fake`` against ``real`` (Naeem et al. 2020, module docstring)."""
    real, fake = _features(real, "real features"), _features(fake, "synthetic features")
    radii = knn_radii(real, k, chunk)
    density = _inside_counts(fake, real, radii, chunk).double().mean() / k
    nearest = torch.empty(len(real), dtype=torch.float64)
    for rows, d in _distance_chunks(real, fake, chunk):
        nearest[rows] = d.min(dim=1).values
    return float(density), float((nearest < radii).double().mean())
