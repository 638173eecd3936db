"""What a network outputs on one image set, gathered over ranks: the input of every label-free score.

:func:`collect_outputs` runs a network over a data set in an Ignite
evaluator (each rank its exact shard, :func:`datasets.batches.evaluation_batches`)
and returns :class:`Outputs`: the logits, the features the linear head reads
and the labels of every image, in data-set order and equal on every rank
(:func:`plumbing.distributed.gather_shards`). The label-shift estimates
(:mod:`adapt.label_shift`) and the model-selection validators
(:mod:`adapt.validators`) are pure functions of these tensors.

Two views of the DCAN network (:mod:`adapt.model`):

* the **evaluation network** (``source_branch=False``): target attention
  branches, corrected features ``f^ = f + dF(f)`` and corrected logits
  ``g^``: what is exported and scored on the target;
* the **source network** (``source_branch=True``): source attention
  branches, uncorrected features ``f`` and logits ``h(f)``: what the source
  cross-entropy trains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.utils.data import Dataset

from datasets.batches import evaluation_batches
from models.backbones import Classifier
from plumbing.distributed import gather_shards
from plumbing.precision import bf16_autocast, memory_layout

from .model import source_rows


@dataclass(frozen=True)
class Outputs:
    """One network's outputs on ``N`` images (CPU tensors, data-set order).

    Attributes:
        logits: ``[N, C]`` float32.
        features: ``[N, D]`` float32, the features the head reads.
        labels: ``[N]`` int64, ``-1`` where the image has no label.
    """

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor

    @property
    def probabilities(self) -> torch.Tensor:
        """``softmax(logits)``, ``[N, C]`` float64."""
        return torch.softmax(self.logits.double(), dim=1)

    @property
    def labelled(self) -> bool:
        """Whether every image has a label (``label >= 0``)."""
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


@torch.no_grad()
def collect_outputs(
    model: Classifier, dataset: Dataset, *, batch_size: int, workers: int, device: torch.device, amp: bool,
    source_branch: bool = False,
) -> Outputs:
    """:class:`Outputs` of ``model`` on every image of ``dataset`` (module docstring for the two views).

    ``source_branch`` routes every image through the source attention
    branches and reads the uncorrected head; a network without domain
    attention has one branch, and without correction blocks ``f^ = f``.
    """
    model.eval()
    layout = memory_layout(device)
    pieces: dict[str, list[torch.Tensor]] = {"logits": [], "features": [], "labels": []}

    def process(_: Engine, batch: dict[str, Any]) -> None:
        images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=layout)
        with bf16_autocast(device, amp), source_rows(model, len(images) if source_branch else 0):
            features = model.backbone(images).float()
        features, logits = (features, model.head(features)) if source_branch else model.corrected(features)
        pieces["logits"].append(logits.float())
        pieces["features"].append(features.float())
        pieces["labels"].append(torch.as_tensor(batch["label"]).to(device, torch.long))

    evaluator = Engine(process)
    evaluator.add_event_handler(Events.STARTED, lambda _: [v.clear() for v in pieces.values()])
    evaluator.run(evaluation_batches(dataset, batch_size, workers, device))
    return Outputs(*(_gathered(pieces[k], len(dataset), device) for k in ("logits", "features", "labels")))


def _gathered(pieces: Iterable[torch.Tensor], length: int, device: torch.device) -> torch.Tensor:
    pieces = list(pieces)
    local = torch.cat(pieces) if pieces else torch.zeros(0, device=device)
    return gather_shards(local, length).cpu()
