"""A frozen backbone judged as the SSL libraries judge one: a weighted k-NN and a linear probe on its features.

Both read the backbone's pooled features of a labelled task
(:class:`~evaluate.protocol.task_data.TaskData`), computed once
(:func:`collect_features`, an Ignite evaluator, every rank its exact shard,
gathered so that every rank holds all of them):

* **weighted k-NN** (Wu et al. 2018, InstDisc; solo-learn's online probe):
  the training images are the bank, every evaluation image votes with its
  ``k`` nearest bank images by cosine similarity, each vote weighted by
  ``exp(s / T)`` (:func:`knn_scores`; ``k = 20``, ``T = 0.07``), and each
  class's votes divided by its share of the bank (:func:`class_balanced`:
  radiograph labels are far from balanced). No choice is made, so the
  validation images are not used.
* **linear probe**: a logistic regression on the standardised features
  (:func:`fit_linear_probe`), one per learning rate of a small grid; the
  rate whose probe has the highest balanced accuracy on the validation
  images is kept and scored on the evaluation images.

Both are scored as the fine-tune protocol is (:func:`evaluate.metrics.scores_report`:
balanced accuracy, AUROC, recall, ...). Their cost is one forward pass over
the three sets plus a few hundred full-batch steps on ``[N, D]`` features:
seconds beside a fine-tune's epochs, so a runs table can show them for every
backbone. The training images are a seeded subset of at most
:data:`PROBE_TRAIN_IMAGES` (a bank of CheXpert's 200,000 would cost more than
it tells).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from torch import nn
from torch.utils.data import Dataset, Subset

from datasets.batches import evaluation_batches
from plumbing.distributed import gather_shards
from plumbing.precision import bf16_autocast, memory_layout
from plumbing.seeding import numpy_rng

from ..metrics import scores_report
from .task_data import TaskData

KNN_K = 20
KNN_TEMPERATURE = 0.07
LINEAR_LR_GRID = (0.1, 0.01, 0.001)
LINEAR_STEPS = 300
LINEAR_WEIGHT_DECAY = 1e-4
PROBE_TRAIN_IMAGES = 10000
"""Most training images the probes read (a seeded subset of a larger training set)."""


@dataclass(frozen=True)
class Features:
    """A backbone's pooled features ``[N, D]`` (float32, CPU, data-set order) and the labels ``[N]`` (int64)."""

    features: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def collect_features(
    backbone: nn.Module, dataset: Dataset, *, batch_size: int, workers: int, device: torch.device, amp: bool
) -> Features:
    """``backbone``'s features of every image of ``dataset``, gathered over ranks (module docstring)."""
    backbone.eval()
    layout = memory_layout(device)
    pieces: dict[str, list[torch.Tensor]] = {"features": [], "labels": []}

    def process(_: Engine, batch: dict[str, Any]) -> None:
        images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=layout)
        with bf16_autocast(device, amp):
            pieces["features"].append(backbone(images).float())
        pieces["labels"].append(torch.as_tensor(batch["label"]).to(device, torch.long))

    Engine(process).run(evaluation_batches(dataset, batch_size, workers, device))
    gathered = []
    for key in ("features", "labels"):
        local = torch.cat(pieces[key]) if pieces[key] else torch.zeros(0, device=device)
        gathered.append(gather_shards(local, len(dataset)).cpu())
    return Features(*gathered)


def knn_scores(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int, *, k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE, chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN class scores ``[M, C]`` of ``queries`` ``[M, D]`` against ``bank`` ``[N, D]`` with labels.

    ``s_ij = <q_i / |q_i|, b_j / |b_j|>``; with ``N_k(i)`` the ``min(k, N)``
    bank rows of the largest ``s_ij``,
    ``score_ic = sum_{j in N_k(i), y_j = c} exp(s_ij / T)`` (Wu et al.
    2018). The prediction is ``argmax_c score_ic``; the scores of a row sum
    to the total weight of its neighbours. Computed in float32, ``chunk``
    queries at a time (memory ``chunk x N``).
    """
    bank = nn.functional.normalize(bank.float(), dim=1)
    one_hot = nn.functional.one_hot(bank_labels.long(), num_classes).float()  # [N, C]
    out = []
    for start in range(0, len(queries), chunk):
        q = nn.functional.normalize(queries[start:start + chunk].float(), dim=1)
        similarity, index = (q @ bank.T).topk(min(k, len(bank)), dim=1)  # [m, k]
        weights = torch.exp(similarity / temperature)
        out.append(torch.einsum("mk,mkc->mc", weights, one_hot[index]))
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def standardiser(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` per feature of ``features`` ``[N, D]``; a constant feature gets std 1."""
    mean, std = features.mean(dim=0), features.std(dim=0, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, lr: float, *, steps: int = LINEAR_STEPS,
    weight_decay: float = LINEAR_WEIGHT_DECAY,
) -> nn.Linear:
    """A logistic regression ``z = W x + b`` on ``features`` ``[N, D]`` (already standardised) with ``labels``.

    Minimises the class-balanced cross-entropy
    ``sum_n a_{y_n} CE(z_n, y_n) / sum_n a_{y_n} + (lambda / 2) |W|^2``
    with ``a_c = 1 / #{n : y_n = c}`` (every class weighs as much, as balanced
    accuracy counts them) by full-batch Adam at ``lr`` for ``steps`` steps from
    ``W = 0, b = 0``: deterministic, and the same on every rank.
    """
    x, y = features.float(), labels.long()
    probe = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    counts = torch.bincount(y, minlength=num_classes).float()
    class_weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    optimiser = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(probe(x), y, weight=class_weights)
        loss = loss + weight_decay / 2 * probe.weight.square().sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return probe


def linear_probe(
    train: Features, validation: Features, evaluation: Features, classes: Sequence[str],
    lr_grid: Sequence[float] = LINEAR_LR_GRID,
) -> dict[str, Any]:
    """The linear probe of the grid's rate with the best validation balanced accuracy (the first on a tie),
    scored on ``evaluation``: its report, ``lr`` and every trial's validation balanced accuracy."""
    mean, std = standardiser(train.features)

    def scaled(features: Features) -> torch.Tensor:
        return (features.features - mean) / std

    trials: dict[str, float] = {}
    best: tuple[float, float, nn.Linear] | None = None
    for lr in lr_grid:
        probe = fit_linear_probe(scaled(train), train.labels, len(classes), lr)
        with torch.no_grad():
            accuracy = scores_report(probe(scaled(validation)), validation.labels, classes)["balanced_accuracy"]
        trials[f"{lr:g}"] = accuracy
        if best is None or accuracy > best[0]:
            best = (accuracy, lr, probe)
    assert best is not None, "an empty learning-rate grid"
    with torch.no_grad():
        report = scores_report(best[2](scaled(evaluation)), evaluation.labels, classes)
    return report | {"lr": best[1], "trials": trials}


def knn_probe(train: Features, evaluation: Features, classes: Sequence[str]) -> dict[str, Any]:
    """The weighted k-NN of ``evaluation`` against the ``train`` bank, each class's score divided by its share
    of the bank (:func:`class_balanced`), scored on the resulting vote shares (``log`` of them as logits, so the
    AUROC ranks images by the share of their class)."""
    scores = class_balanced(knn_scores(train.features, train.labels, evaluation.features, len(classes)), train.labels)
    shares = scores / scores.sum(dim=1, keepdim=True).clamp(min=1e-30)
    return scores_report(shares.clamp(min=1e-30).log(), evaluation.labels, classes) | {
        "k": KNN_K, "temperature": KNN_TEMPERATURE}


def class_balanced(scores: torch.Tensor, bank_labels: torch.Tensor) -> torch.Tensor:
    """``score_ic / pi_c`` with ``pi_c`` the share of class ``c`` in the bank (classes absent from it keep 0).

    InstDisc's vote assumes classes as balanced as ImageNet's; on a bank of
    radiographs that are 90% "No Finding" the majority wins nearly every
    vote by its numbers alone and the balanced accuracy sits at chance
    (measured: 0.25 of 4 classes, every image called "No Finding"). Dividing
    by the prior makes the vote a likelihood ratio, as balanced accuracy
    weighs every class alike.
    """
    counts = torch.bincount(bank_labels.long(), minlength=scores.shape[1]).to(scores.dtype)
    share = counts / counts.sum().clamp(min=1)
    return torch.where(share > 0, scores / share.clamp(min=1e-30), torch.zeros_like(scores))


def probe_subset(dataset: Dataset, seed: int, limit: int = PROBE_TRAIN_IMAGES) -> Dataset:
    """``dataset``, or a seeded subset of ``limit`` of its images when it has more (their order kept)."""
    if len(dataset) <= limit:
        return dataset
    keep = np.sort(numpy_rng(seed, "probe images").permutation(len(dataset))[:limit])
    return Subset(dataset, keep.tolist())


def probe_backbone(
    backbone: nn.Module, data: TaskData, *, seed: int, batch_size: int, workers: int, device: torch.device,
    amp: bool,
) -> dict[str, Any]:
    """``{"knn": report, "linear": report}`` of ``backbone`` on ``data`` (module docstring); ``data.train``
    should hold unaugmented images (features of augmented ones would change from pass to pass)."""
    kwargs = {"batch_size": batch_size, "workers": workers, "device": device, "amp": amp}
    train = collect_features(backbone, probe_subset(data.train, seed), **kwargs)
    validation = collect_features(backbone, data.validation, **kwargs)
    evaluation = collect_features(backbone, data.evaluation, **kwargs)
    return {"knn": knn_probe(train, evaluation, data.classes),
            "linear": linear_probe(train, validation, evaluation, data.classes)}

