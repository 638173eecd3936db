"""Classification metrics as Ignite metrics that reduce correctly across distributed ranks.

:func:`classification_metrics` returns metrics to attach to an evaluator whose output is
``(logits [B, C] float, targets [B] int64)``; predictions are ``pred = argmax_c logits``. Every value equals
scikit-learn's definition (the tests compare them):

- ``confusion``: ``M[i, j] = #{n : y_n = i, pred_n = j}`` (rows true, columns predicted), an int64 ``[C, C]``
  tensor, as ``sklearn.metrics.confusion_matrix(y, pred, labels=range(C))``.
- ``recall``: ``R_c = M[c, c] / sum_j M[c, j]``, 0 where class ``c`` is absent from the targets
  (``recall_score(average=None, labels=range(C), zero_division=0)``).
- ``precision``: ``P_c = M[c, c] / sum_i M[i, c]``, 0 where class ``c`` is never predicted
  (``precision_score(average=None, labels=range(C), zero_division=0)``).
- ``balanced_accuracy``: ``mean_{c in K} R_c`` over the classes present in the targets,
  ``K = {c : sum_j M[c, j] > 0}`` (``balanced_accuracy_score``, which warns about and ignores absent classes).
- ``predicted_histogram``: ``h_c = sum_i M[i, c]``, the number of samples predicted as ``c``.
- ``auroc``: macro one-vs-rest AUROC of ``p = softmax(logits)``,
  ``mean_{c in Q} AUC_c`` over ``Q = {c : 0 < n_c < N}`` (classes with positives and negatives), NaN when ``Q``
  is empty. ``AUC_c`` is the Mann-Whitney statistic of ``p[:, c]`` for ``y == c``,
  ``AUC_c = (sum_{n : y_n = c} rank_n - n_c (n_c + 1) / 2) / (n_c (N - n_c))`` with ``rank`` the 1-based rank of
  ``p_n[c]`` among all ``N`` scores, ties given their average rank: this is the trapezoidal area under the ROC
  curve, ``mean_{c in Q} roc_auc_score(y == c, p[:, c])`` (``roc_auc_score(y, p, multi_class="ovr")`` when every
  class is present). Ranks are computed in float64.

Reduction across ranks (``ignite.distributed``): the confusion-derived metrics are :class:`~ignite.metrics.
MetricsLambda` over one shared :class:`~ignite.metrics.ConfusionMatrix`, whose counts are summed over ranks by its
``all_reduce`` in ``compute``; every rank then derives the same values. :class:`MacroAUROC` keeps each rank's
scores and targets and, in ``compute``, gathers them with ``idist.all_gather``: the ranks' sample counts are
gathered first, each rank pads its samples to the largest count, and the padding is stripped after the gather, so
uneven shards are neither lost nor duplicated. :func:`metrics_report` turns ``engine.state.metrics`` into a
JSON-ready dict; where a class has no evaluation sample, the report lists it under :data:`MISSING` (so a balanced
accuracy over the classes present is never taken for one over every class) and :func:`missing_classes_note`
says so in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import ConfusionMatrix, Metric, MetricsLambda
from ignite.metrics.metric import reinit__is_reduced

from plumbing.errors import UserError

MISSING = "classes_missing_from_evaluation"
"""The report's key for the classes without an evaluation sample (present only when there are any)."""
METRIC_NAMES = ("confusion", "balanced_accuracy", "recall", "precision", "predicted_histogram", "auroc")
"""The keys of :func:`classification_metrics`, which :func:`metrics_report` reads from ``engine.state.metrics``."""


def _recall(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class recall ``M[c, c] / sum_j M[c, j]`` in float64, 0 for classes absent from the targets."""
    support = confusion.sum(dim=1).double()
    return torch.where(support > 0, confusion.diagonal().double() / support.clamp(min=1), 0.0)


def _precision(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class precision ``M[c, c] / sum_i M[i, c]`` in float64, 0 for classes never predicted."""
    predicted = confusion.sum(dim=0).double()
    return torch.where(predicted > 0, confusion.diagonal().double() / predicted.clamp(min=1), 0.0)


def _balanced_accuracy(confusion: torch.Tensor) -> float:
    """Mean recall over the classes present in the targets (rows of ``confusion`` with a positive sum)."""
    present = confusion.sum(dim=1) > 0
    return _recall(confusion)[present].mean().item()


def _predicted_histogram(confusion: torch.Tensor) -> torch.Tensor:
    """Number of samples predicted as each class: the column sums of ``confusion``."""
    return confusion.sum(dim=0)


def binary_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (both 1-D, same length).

    Mann-Whitney form ``(sum of positive ranks - P (P + 1) / 2) / (P Q)`` with ``P`` positives, ``Q`` negatives and
    tied scores given their average rank, which equals sklearn's trapezoidal ``roc_auc_score``; NaN unless both
    ``P`` and ``Q`` are positive.
    """
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(scores.double(), sorted=True, return_inverse=True, return_counts=True)
    # The group of equal scores spanning 1-based ranks (end - count + 1) .. end has average rank end - (count - 1) / 2.
    ends = counts.cumsum(dim=0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def macro_auroc(probabilities: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """The mean of :func:`binary_auroc` of ``probabilities[:, c]`` for ``targets == c`` over the classes with both
    positives and negatives in ``targets``; NaN when there is none."""
    aucs = [binary_auroc(probabilities[:, c], targets == c) for c in range(num_classes)]
    qualified = [auc for auc in aucs if not math.isnan(auc)]
    return sum(qualified) / len(qualified) if qualified else math.nan


class MacroAUROC(Metric):
    """Macro one-vs-rest AUROC of ``softmax(logits)``: the mean of :func:`binary_auroc` over the classes with both
    positives and negatives in the targets, NaN when there is none.

    ``update`` takes ``(logits [B, C], targets [B])``; ``compute`` gathers every rank's samples (uneven counts
    allowed) and returns the same float on every rank.
    """

    _state_dict_all_req_keys = ("_scores", "_targets")

    def __init__(
        self, num_classes: int, output_transform: Callable = lambda out: out, device: str | torch.device = "cpu"
    ) -> None:
        if num_classes < 2:
            raise UserError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        logits, targets = output[0].detach(), output[1].detach()
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape [B, {self.num_classes}], got {list(logits.shape)}")
        if targets.shape != logits.shape[:1]:
            raise ValueError(f"targets must have shape [{logits.shape[0]}], got {list(targets.shape)}")
        if targets.numel() and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise ValueError(f"targets must lie in [0, {self.num_classes}), got {targets.min()}..{targets.max()}")
        self._scores.append(torch.softmax(logits.to(self._device, torch.float64), dim=1))
        self._targets.append(targets.to(self._device, torch.int64))

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' scores ``[N, C]`` and targets ``[N]``, in rank order, without padding."""
        scores = torch.cat(self._scores) if self._scores else torch.zeros(0, self.num_classes, dtype=torch.float64)
        targets = torch.cat(self._targets) if self._targets else torch.zeros(0, dtype=torch.int64)
        scores, targets = scores.to(self._device), targets.to(self._device)
        world_size = idist.get_world_size()
        if world_size == 1:
            return scores, targets
        lengths = idist.all_gather(torch.tensor([len(targets)], device=self._device)).tolist()
        longest = max(lengths)
        pad = longest - len(targets)
        scores = idist.all_gather(torch.nn.functional.pad(scores, (0, 0, 0, pad))).view(world_size, longest, -1)
        targets = idist.all_gather(torch.nn.functional.pad(targets, (0, pad))).view(world_size, longest)
        keep = torch.arange(longest, device=self._device) < torch.tensor(lengths, device=self._device)[:, None]
        return scores[keep], targets[keep]

    def compute(self) -> float:
        scores, targets = self._gathered()
        if len(targets) == 0:
            raise NotComputableError("MacroAUROC must have at least one example before it can be computed.")
        return macro_auroc(scores, targets, self.num_classes)


def classification_metrics(
    num_classes: int, output_transform: Callable = lambda out: out, device: str | torch.device = "cpu"
) -> dict[str, Metric]:
    """The metrics of this module keyed by name, for an evaluator whose output (after ``output_transform``) is
    ``(logits [B, C], targets [B])``; the confusion-derived ones share one :class:`~ignite.metrics.ConfusionMatrix`.
    """
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    confusion = ConfusionMatrix(num_classes, output_transform=output_transform, device=device)
    return {
        "confusion": confusion,
        "balanced_accuracy": MetricsLambda(_balanced_accuracy, confusion),
        "recall": MetricsLambda(_recall, confusion),
        "precision": MetricsLambda(_precision, confusion),
        "predicted_histogram": MetricsLambda(_predicted_histogram, confusion),
        "auroc": MacroAUROC(num_classes, output_transform=output_transform, device=device),
    }


def metrics_report(metrics: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """JSON-ready summary of ``engine.state.metrics`` after an evaluator ran with :func:`classification_metrics`
    attached under its names; ``classes`` names the classes in index order. ``auroc`` is None where it is NaN.
    """
    missing = [name for name in METRIC_NAMES if name not in metrics]
    if missing:
        raise UserError(f"metrics lack {', '.join(missing)}: attach classification_metrics() under its names")
    confusion = torch.as_tensor(metrics["confusion"])
    if len(classes) != confusion.shape[0]:
        raise UserError(f"{len(classes)} class names given for {confusion.shape[0]} classes")
    auroc = float(metrics["auroc"])
    histogram = metrics["predicted_histogram"]
    names = list(classes)
    absent = [name for name, count in zip(names, confusion.sum(dim=1).tolist(), strict=True) if count == 0]
    return {
        "balanced_accuracy": float(metrics["balanced_accuracy"]),
        "auroc": None if math.isnan(auroc) else auroc,
        "recall": dict(zip(names, torch.as_tensor(metrics["recall"]).tolist(), strict=True)),
        "precision": dict(zip(names, torch.as_tensor(metrics["precision"]).tolist(), strict=True)),
        "confusion_matrix": confusion.long().tolist(),
        "predicted_histogram": dict(zip(names, torch.as_tensor(histogram).long().tolist(), strict=True)),
        "n": int(confusion.sum()),
    } | ({MISSING: absent} if absent else {})


def scores_report(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """:func:`metrics_report` of ``logits`` ``[N, C]`` and ``targets`` ``[N]`` already gathered on this rank
    (no reduction across ranks): the same metrics, from the same definitions, for a probe scored in one place."""
    num_classes = len(classes)
    predicted = logits.argmax(dim=1)
    confusion = torch.bincount(targets.long() * num_classes + predicted, minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes)
    probabilities = torch.softmax(logits.double(), dim=1)
    metrics = {
        "confusion": confusion, "balanced_accuracy": _balanced_accuracy(confusion), "recall": _recall(confusion),
        "precision": _precision(confusion), "predicted_histogram": _predicted_histogram(confusion),
        "auroc": macro_auroc(probabilities, targets, num_classes),
    }
    return metrics_report(metrics, classes)


def _absent(report: Mapping[str, Any]) -> list[str]:
    """The classes a report or results record as missing from the evaluation set (:data:`MISSING`)."""
    return list(report.get(MISSING) or [])


def missing_classes_note(report: Mapping[str, Any]) -> str:
    """``""``, or for a report (:func:`metrics_report`) with classes missing from the evaluation set the words that
    qualify its balanced accuracy: ``" over the 3 classes present (no evaluation image of Pneumothorax)"``."""
    absent = _absent(report)
    if not absent:
        return ""
    present = len(report["recall"]) - len(absent)
    classes = "class" if present == 1 else "classes"
    return f" over the {present} {classes} present (no evaluation image of {', '.join(absent)})"


def missing_classes_warning(report: Mapping[str, Any], which: str = "evaluation set") -> str | None:
    """A warning line naming the classes ``which`` (``"target evaluation set"``...) has no image of, for a report
    (:func:`metrics_report`) or results holding :data:`MISSING`; ``None`` when it has every class."""
    absent = _absent(report)
    if not absent:
        return None
    return (f"warning: the {which} has no image of {', '.join(absent)}; its balanced accuracy is over the classes "
            "present (pass a larger --eval-length)")
