"""Relative Location (Doersch et al. 2015): where an outer patch of a 3 x 3 grid lies relative to the centre patch.

:func:`ssl.views.location_patches` cuts, for every image, a patch of
``64/85`` of the cell side at a random offset inside each cell and pairs the
8 outer patches with the centre one. The backbone embeds both patches; the
head - the reference's ``fc 2D -> 4096 -> BN -> ReLU -> dropout -> fc 8`` (``D``
2048 for ResNet-50) -
classifies the position from the two features concatenated, with
:func:`ssl.losses.position_cross_entropy`. Patches smaller than
``min_patch`` pixels (small images) are resized up to it bilinearly so that
the backbone's strides leave a feature map.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import Backbone

from ..losses import position_cross_entropy
from ..views import location_patches
from .base import PretextTask, TaskContext, check_settings

POSITIONS = 8


@dataclass(frozen=True)
class RelativeLocationSettings:
    hidden_dim: int = 4096
    dropout: float = 0.5
    min_patch: int = 16

    def __post_init__(self) -> None:
        check_settings("relloc", {"hidden_dim >= 1": self.hidden_dim >= 1, "0 <= dropout < 1": 0 <= self.dropout < 1,
                                  "min_patch >= 8": self.min_patch >= 8})


class RelativeLocation(PretextTask):
    name = "relloc"

    def __init__(self, backbone: Backbone, settings: RelativeLocationSettings, context: TaskContext) -> None:
        super().__init__(backbone, settings, context)
        width = settings.hidden_dim
        self.head = nn.Sequential(OrderedDict(
            fc=nn.Linear(2 * backbone.feature_dim, width), norm=nn.BatchNorm1d(width),
            relu=nn.ReLU(), dropout=nn.Dropout(settings.dropout), out=nn.Linear(width, POSITIONS),
        ))

    def loss(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        centres, neighbours, labels = location_patches(images, generator)
        patches = torch.cat([centres, neighbours])
        if patches.shape[-1] < self.settings.min_patch:
            patches = F.interpolate(patches, size=self.settings.min_patch, mode="bilinear", align_corners=False)
        features = self.backbone(patches)
        pairs = torch.cat(features.chunk(2), dim=1)  # [8B, 2D]: centre feature, then the outer patch's
        logits = self.head(pairs)
        loss = position_cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy)}
