"""evaluate.quality.distances: Frechet distance and precision/recall/density/coverage in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from evaluate.quality.distances import (
    bootstrap_interval,
    density_coverage,
    feature_statistics,
    frechet_between,
    frechet_distance,
    knn_radii,
    nearest_neighbours,
    precision_recall,
)
from plumbing.errors import UserError


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_frechet_is_zero_for_identical_sets_and_grows_with_a_mean_shift() -> None:
    x = _gaussian(500, 8, 0)
    assert frechet_between(x, x) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_between(x, x + s) for s in (0.5, 1.0, 2.0)]
    for s, value in zip((0.5, 1.0, 2.0), shifts, strict=True):
        assert value == pytest.approx(8 * s**2, rel=1e-8)  # same covariance: |shift|^2 over 8 dimensions
    assert shifts == sorted(shifts)


def test_frechet_closed_form_for_diagonal_covariances() -> None:
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    expected = float((mu1 - mu2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum())  # 5 + 1 + 1 + 4
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, rel=1e-10)
    assert expected == 11.0


def test_feature_statistics_use_the_unbiased_covariance() -> None:
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, -2.0]])
    mu, cov = feature_statistics(x)
    torch.testing.assert_close(mu, torch.tensor([2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(cov, torch.tensor([[4.0, -2.0], [-2.0, 4.0]], dtype=torch.float64))


def test_bootstrap_interval_is_seeded_and_brackets_the_distance() -> None:
    x, y = _gaussian(300, 4, 1), _gaussian(300, 4, 2, shift=1.0)
    low, high = bootstrap_interval(frechet_between, x, y, rounds=50, seed=3)
    assert (low, high) == bootstrap_interval(frechet_between, x, y, rounds=50, seed=3)
    assert low < frechet_between(x, y) < high


def test_precision_recall_density_coverage_on_a_line() -> None:
    real = torch.arange(10.0)[:, None]  # 0..9: every k = 1 radius is 1
    fake = torch.tensor([[0.5], [20.0]])  # one point among the reals, one far away
    torch.testing.assert_close(knn_radii(real, 1), torch.ones(10, dtype=torch.float64))
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == 0.5  # 0.5 lies in the balls of 0 and 1, 20 in none
    assert recall == 1.0  # the fake radii are 19.5: every real point lies within 19.5 of 0.5
    density, coverage = density_coverage(real, fake, k=1)
    assert density == 1.0  # (2 + 0) balls / 2 points / k
    assert coverage == 0.2  # only 0 and 1 have a fake point closer than 1


def test_identical_sets_have_full_precision_recall_and_coverage() -> None:
    x = _gaussian(200, 3, 4)
    shifted = x + 0.01
    assert precision_recall(x, shifted, k=5) == (1.0, 1.0)
    density, coverage = density_coverage(x, shifted, k=5)
    assert coverage == 1.0 and density > 1.0  # each point also sits in its own ball
    real, fake = _gaussian(1000, 3, 7), _gaussian(1000, 3, 8)  # two samples of one distribution
    density, coverage = density_coverage(real, fake, k=5)
    assert math.isclose(density, 1.0, abs_tol=0.15)
    assert math.isclose(coverage, 1 - 0.5**5, abs_tol=0.04)  # Naeem et al.: 1 - 2^-k for equal distributions
    far = x + 100.0
    assert precision_recall(x, far, k=5) == (0.0, 0.0) and density_coverage(x, far, k=5) == (0.0, 0.0)


def test_chunking_does_not_change_the_result() -> None:
    real, fake = _gaussian(97, 3, 5), _gaussian(61, 3, 6, shift=0.3)
    assert precision_recall(real, fake, 3, chunk=7) == precision_recall(real, fake, 3, chunk=1000)
    assert density_coverage(real, fake, 3, chunk=7) == density_coverage(real, fake, 3, chunk=1000)


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserError, match="need more than 5 points"):
        knn_radii(torch.zeros(5, 2), 5)
    with pytest.raises(UserError, match=r"\[N, D\] features"):
        frechet_between(torch.zeros(10), torch.zeros(10))


def test_nearest_neighbours_with_and_without_the_point_itself() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    distances, indices = nearest_neighbours(points, points, exclude_self=True, chunk=2)
    assert distances.tolist() == [1.0, 1.0, 2.0] and indices.tolist() == [1, 0, 1]
    distances, indices = nearest_neighbours(torch.tensor([[2.9, 0.0], [0.2, 0.0]]), points)
    assert distances.tolist() == pytest.approx([0.1, 0.2]) and indices.tolist() == [2, 0]
