"""Honest model selection and collapse detection for adaptation runs.

Target labels never choose anything. Every evaluation records the target
metrics beside two label-free scores, and the results name four figures:

* ``final`` - the last step's (the headline figure);
* ``source_validation`` - the evaluation with the best source validation
  balanced accuracy (later steps win ties);
* ``information_maximisation`` - the evaluation with the best unsupervised
  score ``D - H`` on the target evaluation images' predictions: the entropy
  of the mean prediction minus the mean prediction entropy
  (:class:`PredictionSpread`), high when predictions are confident and spread
  over the classes;
* ``oracle`` - the best by target labels, shown only as an upper bound.

A run *collapsed* when one class takes more than :data:`COLLAPSE_SHARE` of
the target predictions (:func:`collapsed_class`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

COLLAPSE_SHARE = 0.95
CRITERIA = {
    "final": None,
    "source_validation": "source_validation_balanced_accuracy",
    "information_maximisation": "information_maximisation",
    "oracle": "balanced_accuracy",
}
"""Each reported figure and the history entry it maximises (``None``: the last entry)."""


def collapsed_class(histogram: Mapping[str, int], share: float = COLLAPSE_SHARE) -> str | None:
    """The class that takes more than ``share`` of the predictions, or ``None``."""
    total = sum(histogram.values())
    if total == 0:
        return None
    name, count = max(histogram.items(), key=lambda item: item[1])
    return name if count > share * total else None


class PredictionSpread(Metric):
    """``{"entropy": H, "diversity": D, "score": D - H}`` of ``softmax(logits)`` over every rank's images.

    ``H = (1/N) sum_i -sum_c p_ic log p_ic`` and ``D = -sum_c pbar_c log pbar_c``
    with ``pbar`` the mean prediction; the sums are all-reduced, so every rank
    returns the same values. The evaluator's output is ``(logits, labels)``;
    the labels are ignored.
    """

    _state_dict_all_req_keys = ("_probability_sum", "_entropy_sum", "_count")

    def __init__(self, num_classes: int, device: str | torch.device = "cpu") -> None:
        self.num_classes = num_classes
        super().__init__(output_transform=lambda out: out, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._probability_sum = torch.zeros(self.num_classes, dtype=torch.float64, device=self._device)
        self._entropy_sum = torch.zeros((), dtype=torch.float64, device=self._device)
        self._count = torch.zeros((), dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        log_p = torch.log_softmax(output[0].detach().to(self._device, torch.float64), dim=1)
        p = log_p.exp()
        self._probability_sum += p.sum(dim=0)
        self._entropy_sum += -(p * log_p).sum()
        self._count += len(p)

    @sync_all_reduce("_probability_sum", "_entropy_sum", "_count")
    def compute(self) -> dict[str, float]:
        n = max(float(self._count), 1.0)
        mean = self._probability_sum / n
        diversity = float(-(mean * torch.log(mean.clamp(min=1e-12))).sum())
        entropy = float(self._entropy_sum) / n
        return {"entropy": entropy, "diversity": diversity, "score": diversity - entropy}


def select(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The history entry of every figure of :data:`CRITERIA` (module docstring)."""
    if not history:
        return {}
    chosen = {}
    for figure, key in CRITERIA.items():
        if key is None:
            chosen[figure] = dict(history[-1])
            continue
        best = max(range(len(history)), key=lambda i: (_finite(history[i][key]), i))
        chosen[figure] = dict(history[best])
    return chosen


def _finite(value: float) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf

