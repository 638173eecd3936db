"""Honest model selection and collapse detection for adaptation runs.

Target labels never choose anything. Every evaluation records the target
metrics beside two label-free scores, and the results name four figures:

* ``final`` - the last step's (the headline figure);
* ``source_validation`` - the evaluation with the best source validation
  balanced accuracy (later steps win ties);
* ``information_maximisation`` - the evaluation with the best unsupervised
  score ``D - H`` on the target evaluation images' predictions: the entropy
  of the mean prediction minus the mean prediction entropy
  (:func:`prediction_spread`), high when predictions are confident and spread
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


def prediction_spread(probabilities: torch.Tensor) -> dict[str, float]:
    """``{"entropy": H, "diversity": D, "score": D - H}`` of the predictions ``p`` (``[N, C]``, rows summing to 1).

    ``H = (1/N) sum_i -sum_c p_ic log p_ic`` (the mean prediction entropy) and
    ``D = -sum_c pbar_c log pbar_c`` with ``pbar = (1/N) sum_i p_i`` (the
    entropy of the mean prediction); ``0 log 0 = 0``.
    """
    p = probabilities.double()
    entropy = float(-torch.special.xlogy(p, p).sum(dim=1).mean())
    mean = p.mean(dim=0)
    diversity = float(-torch.special.xlogy(mean, mean).sum())
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

