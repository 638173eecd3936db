"""Honest model selection and collapse detection for adaptation runs.

Target labels never choose anything. Every evaluation records the target
metrics beside label-free scores, and the results name one figure per
criterion of :data:`CRITERIA`:

* ``final`` - the last step's (the headline figure);
* ``source_validation`` - the evaluation with the best source validation
  balanced accuracy;
* ``information_maximisation`` - the evaluation with the best unsupervised
  score ``D - H`` on the target selection images' predictions: the entropy
  of the mean prediction minus the mean prediction entropy
  (:func:`prediction_spread`), high when predictions are confident and spread
  over the classes;
* ``snd``, ``dev``, ``bnm`` - the evaluation with the highest soft
  neighbourhood density, the lowest deep-embedded-validation risk and the
  highest batch nuclear-norm (:mod:`adapt.validators`);
* ``target_entropy`` - the evaluation with the lowest mean prediction
  entropy on the target selection images;
* ``oracle`` - the best by target labels, shown only as an upper bound (absent
  when the target evaluation images have no labels).

Later evaluations win ties; an evaluation without a criterion's score (or a
non-finite one) never wins it, and a criterion no evaluation scored chooses
nothing.

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
    "snd": "snd",
    "dev": "dev_risk",
    "bnm": "bnm",
    "target_entropy": "prediction_entropy",
    "oracle": "balanced_accuracy",
}
"""Each reported figure and the history entry it optimises (``None``: the last entry)."""
LOWEST = frozenset({"dev_risk", "prediction_entropy"})
"""The history entries of :data:`CRITERIA` whose lowest value wins (the others' highest)."""
LABEL_FREE = tuple(name for name in CRITERIA if name != "oracle")
"""The criteria that read no target label."""


def criterion_text(figure: str) -> str:
    """How ``figure`` chooses, as ``results.json`` records it: ``"last step"``, ``KEY`` or ``KEY (lowest)``."""
    key = CRITERIA[figure]
    return "last step" if key is None else f"{key} (lowest)" if key in LOWEST else key


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
    """The history entry of every figure of :data:`CRITERIA` that some evaluation scored (module docstring)."""
    if not history:
        return {}
    chosen = {}
    for figure, key in CRITERIA.items():
        if key is None:
            chosen[figure] = dict(history[-1])
            continue
        if all(entry.get(key) is None for entry in history):
            continue
        sign = -1.0 if key in LOWEST else 1.0
        best = max(range(len(history)), key=lambda i: (_finite(history[i].get(key), sign), i))
        chosen[figure] = dict(history[best])
    return chosen


def _finite(value: float | None, sign: float) -> float:
    return sign * value if value is not None and math.isfinite(value) else -math.inf


def selection_gaps(histories: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """How close each label-free criterion's choice comes to the oracle's over runs (Musgrave et al. 2022).

    For every run history with target labels (an ``oracle`` figure) and every
    criterion of :data:`LABEL_FREE` that chose in it, the *gap* is the
    balanced accuracy of the oracle's evaluation minus that of the
    criterion's (``>= 0``; 0 when the criterion chose as well as target labels
    could). One row per criterion that chose in some run:
    ``{"criterion", "mean_gap", "worst_gap", "runs"}`` (mean and largest gap,
    how many runs), smallest mean gap first (then by name). Runs without
    target labels are skipped; none left gives ``[]``.
    """
    gaps: dict[str, list[float]] = {name: [] for name in LABEL_FREE}
    for history in histories:
        chosen = select(history)
        if "oracle" not in chosen:
            continue
        best = chosen["oracle"]["balanced_accuracy"]
        for name in LABEL_FREE:
            if name in chosen and chosen[name].get("balanced_accuracy") is not None:
                gaps[name].append(best - chosen[name]["balanced_accuracy"])
    rows = [{"criterion": name, "mean_gap": sum(values) / len(values), "worst_gap": max(values), "runs": len(values)}
            for name, values in gaps.items() if values]
    return sorted(rows, key=lambda row: (row["mean_gap"], row["criterion"]))
