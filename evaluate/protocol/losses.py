"""Losses of the downstream classifier, as pure functions.

Class-balanced cross-entropy. With ``n_c`` training images of class ``c``
out of ``N``, and ``K`` classes that have images, the class weights are the
inverse frequencies normalised to mean 1 over the images::

    w_c = N / (K * n_c)        (0 for a class without images)

and the loss of a batch of ``B`` images with logits ``z_i`` and classes ``y_i`` is::

    L = (1 / B) * sum_i w_{y_i} * (-log softmax(z_i)[y_i])

It is divided by the batch size, not by the sum of the weights (as
``torch.nn.functional.cross_entropy(weight=...)`` does), so the mean of the
losses of the parts of a batch equals the loss of the whole batch: averaging
gradients over processes gives exactly the single-process gradient. Its
expectation over the training set weighs every class equally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``w_c = N / (K * n_c)`` from the training labels ``[N]`` (0 for an empty class), float32 ``[C]``."""
    counts = torch.bincount(labels.long(), minlength=num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, labels.numel() / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``(1/B) sum_i w_{y_i} CE(z_i, y_i)``; plain mean cross-entropy when ``weights`` is ``None``."""
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    if weights is not None:
        losses = losses * weights.to(losses.device)[targets]
    return losses.mean()
