"""Rotation prediction (Gidaris et al. 2018): which of 0, 90, 180, 270 degrees an image was turned by.

Every image of the batch is shown in its four rotations (:func:`ssl.views.rotations`);
a linear head on the pooled backbone feature predicts the rotation and the
loss is :func:`ssl.losses.position_cross_entropy` over the ``4B`` views. The
reference trains it with SGD at lr 0.2 for 70 epochs on ImageNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.backbones import Backbone

from ..losses import position_cross_entropy
from ..views import rotations
from .base import PretextTask, TaskContext

ROTATIONS = 4


@dataclass(frozen=True)
class RotationSettings:
    """Rotation has no setting of its own beyond the shared ones (learning rate, epochs)."""


class Rotation(PretextTask):
    name = "rotation"

    def __init__(self, backbone: Backbone, settings: RotationSettings, context: TaskContext) -> None:
        super().__init__(backbone, settings, context)
        self.head = nn.Linear(backbone.feature_dim, ROTATIONS)

    def loss(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        views, labels = rotations(images)
        logits = self.head(self.backbone(views))
        loss = position_cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy)}
