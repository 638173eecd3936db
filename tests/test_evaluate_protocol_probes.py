"""Tests for :mod:`evaluate.protocol.probes`: the weighted k-NN and the linear probe on closed-form cases, and
both probes of a backbone on phantoms."""

from __future__ import annotations

import math

import torch

from evaluate.protocol.probes import (
    Features,
    class_balanced,
    fit_linear_probe,
    knn_probe,
    knn_scores,
    linear_probe,
    probe_backbone,
    probe_subset,
    standardiser,
)
from evaluate.protocol.task_data import DataChoice, task_data
from models.backbones import build_backbone

CLASSES = ("a", "b")


def test_knn_scores_weigh_the_k_nearest_by_exp_similarity_over_temperature() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[2.0, 0.0]])  # cosine 1, 0, 1/sqrt(2), -1 with the bank rows
    scores = knn_scores(bank, labels, query, 2, k=2, temperature=0.5)
    # the two nearest: row 0 (s = 1, class 0) and row 2 (s = 0.7071, class 1)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(2**-0.5 / 0.5)]])
    torch.testing.assert_close(scores, expected)
    every = knn_scores(bank, labels, query, 2, k=10, temperature=1.0)  # k above the bank: all four vote
    torch.testing.assert_close(every, torch.tensor([[math.e + math.exp(-1), 1 + math.exp(2**-0.5)]]))


def test_knn_scores_are_chunked_without_changing_them() -> None:
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 8, generator=generator), torch.randn(23, 8, generator=generator)
    labels = torch.randint(0, 3, (50,), generator=generator)
    torch.testing.assert_close(knn_scores(bank, labels, queries, 3, chunk=5), knn_scores(bank, labels, queries, 3))


def test_class_balanced_votes_let_a_rare_class_win_where_its_neighbours_are_denser() -> None:
    """A bank of 18 negatives around (1, 0) and 2 positives at (0, 1); a query at (0.2, 1) has both positives
    among its 20 neighbours but also every negative: the plain vote calls it negative, the balanced one positive."""
    bank = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(18, 1), torch.tensor([[0.0, 1.0]]).repeat(2, 1)])
    labels = torch.tensor([0] * 18 + [1] * 2)
    query = Features(torch.tensor([[0.2, 1.0]]), torch.tensor([1]))
    plain = knn_scores(bank, labels, query.features, 2, temperature=1.0)
    assert plain[0, 0] > plain[0, 1]
    torch.testing.assert_close(class_balanced(plain, labels), plain / torch.tensor([0.9, 0.1]))
    assert class_balanced(plain, labels)[0, 1] > class_balanced(plain, labels)[0, 0]
    assert knn_probe(Features(bank, labels), query, CLASSES)["recall"]["b"] == 1.0
    absent = class_balanced(torch.ones(1, 3), torch.tensor([0, 0, 1]))  # class 2 is not in the bank
    torch.testing.assert_close(absent, torch.tensor([[1.5, 3.0, 0.0]]))


def _blobs(n: int, seed: int, shift: float = 3.0) -> Features:
    """Two Gaussian classes in 5 dimensions, apart along the first axis (linearly separable for a large shift)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    features = torch.randn(n, 5, generator=generator)
    features[:, 0] += shift * (2 * labels - 1)
    return Features(features, labels)


def test_the_knn_probe_separates_separable_classes_and_scores_its_vote_shares() -> None:
    report = knn_probe(_blobs(200, 0, shift=6.0), _blobs(100, 1, shift=6.0), CLASSES)
    assert report["balanced_accuracy"] == 1.0 and report["auroc"] == 1.0
    assert report["k"] == 20 and report["temperature"] == 0.07


def test_the_linear_probe_learns_separable_classes_from_zero_and_is_deterministic() -> None:
    train = _blobs(200, 0)
    mean, std = standardiser(train.features)
    probe = fit_linear_probe((train.features - mean) / std, train.labels, 2, 0.1)
    assert probe.weight[1, 0] > 0 > probe.weight[0, 0]  # the discriminative axis, with the right sign
    again = fit_linear_probe((train.features - mean) / std, train.labels, 2, 0.1)
    torch.testing.assert_close(probe.weight, again.weight)
    report = linear_probe(train, _blobs(100, 1), _blobs(100, 2), CLASSES, lr_grid=(0.1, 1e-6))
    assert report["balanced_accuracy"] > 0.95
    assert report["lr"] == 0.1 and set(report["trials"]) == {"0.1", "1e-06"}


def test_the_linear_probe_weighs_the_classes_equally() -> None:
    """Nine negatives to one positive: unweighted, the probe would call everything negative."""
    generator = torch.Generator().manual_seed(3)
    labels = (torch.arange(500) % 10 == 0).long()
    features = torch.randn(500, 3, generator=generator)
    features[:, 0] += 1.5 * labels
    data = Features(features, labels)
    report = linear_probe(data, data, data, CLASSES, lr_grid=(0.1,))
    assert report["recall"]["b"] > 0.6 and report["balanced_accuracy"] > 0.7


def test_a_standardiser_keeps_a_constant_feature_finite() -> None:
    mean, std = standardiser(torch.tensor([[1.0, 2.0], [1.0, 4.0]]))
    torch.testing.assert_close(mean, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(std, torch.tensor([1.0, 1.0]))


def test_probe_subset_keeps_a_seeded_ordered_subset() -> None:
    data = list(range(30))
    assert probe_subset(data, 0, limit=40) is data
    subset = probe_subset(data, 0, limit=10)
    assert len(subset) == 10 and list(subset.indices) == sorted(subset.indices)
    assert list(subset.indices) == list(probe_subset(data, 0, limit=10).indices)


def test_both_probes_of_a_backbone_on_phantoms() -> None:
    choice = DataChoice("phantom", None, 1, "0s", 120)
    data = task_data(choice, choice, 32, seed=0)
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", data.channels)
    probes = probe_backbone(backbone, data, seed=0, batch_size=32, workers=0, device=torch.device("cpu"), amp=False)
    assert set(probes) == {"knn", "linear"}
    for report in probes.values():
        assert 0.0 <= report["balanced_accuracy"] <= 1.0 and report["n"] == len(data.evaluation)
    assert probes["linear"]["lr"] in (0.1, 0.01, 0.001)
