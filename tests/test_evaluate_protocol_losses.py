"""evaluate.protocol.losses: class weights and the class-balanced cross-entropy in closed form."""

from __future__ import annotations

import math

import torch

from evaluate.protocol.losses import class_weights, weighted_cross_entropy


def test_class_weights_are_inverse_frequencies_with_mean_one_over_images() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    w = class_weights(labels, 4)
    torch.testing.assert_close(w, torch.tensor([6 / 9, 6 / 3, 6 / 6, 0.0]))
    assert math.isclose(float(w[labels].mean()), 1.0, rel_tol=1e-6)


def test_weighted_cross_entropy_closed_form_and_split_batches() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([0, 1])
    weights = torch.tensor([2.0, 0.5])
    # CE: log 2 for the first row, log 4 for the second (p = 1/4)
    expected = (2.0 * math.log(2.0) + 0.5 * math.log(4.0)) / 2
    assert math.isclose(float(weighted_cross_entropy(logits, targets, weights)), expected, rel_tol=1e-6)
    assert math.isclose(float(weighted_cross_entropy(logits, targets, None)), (math.log(2) + math.log(4)) / 2,
                        rel_tol=1e-6)
    halves = [weighted_cross_entropy(logits[i : i + 1], targets[i : i + 1], weights) for i in range(2)]
    assert math.isclose(float(sum(halves) / 2), expected, rel_tol=1e-6)  # the mean of the parts is the whole
