"""The sections of a synthetic store's quality report, computed from features, predictions and metrics.

Notation: ``S`` the synthetic images of the report (class ``c``: ``S_c``),
``R`` held-out reference images, split per class into two disjoint halves
``A`` and ``B`` of the size of the synthetic set they are compared with
(:func:`reference_halves`).

* **fidelity**: ``FD(S, A)`` overall and per class, with a 95% basic
  bootstrap interval ``[2 FD - q_97.5, 2 FD - q_2.5]`` (``q``: percentiles of
  ``FD(S*, A*)`` over resamplings with replacement; the repeated images of a
  resampling inflate the distance, so the percentile interval itself would
  lie above the estimate; clipped at 0), beside the floor ``FD(B, A)``: the distance two samples of the reference
  itself lie apart at that size (the Frechet distance is biased upwards at
  small sizes, so only the comparison with the floor is meaningful);
* **coverage**: precision, recall, density and coverage of ``S`` against
  ``A`` (:mod:`evaluate.quality.distances`), overall and per class, beside
  the values of ``B`` against ``A``;
* **label fidelity**: the share of ``S_c`` that a classifier trained on the
  reference assigns to ``c`` (its agreement with the intended class), the
  confusion matrix (rows intended, columns predicted) and, as the ceiling to
  read it against, the same classifier's recall on real held-out images;
* **usefulness**: balanced accuracy on the real held-out images of a
  classifier trained on the synthetic images (train-on-synthetic /
  test-on-real) and of one trained on reference images with the same
  protocol and budget (train-on-real / test-on-real), and their ratio;
* **memorisation**: :mod:`evaluate.quality.memorisation` in feature and pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from evaluate.quality.distances import (
    DEFAULT_K,
    bootstrap_interval,
    density_coverage,
    frechet_between,
    precision_recall,
)
from evaluate.quality.memorisation import Memorisation
from plumbing.seeding import numpy_rng

MIN_FD_IMAGES = 10
"""Fewer images of a class than this leave its Frechet distance and coverage unmeasured."""
CLOSEST_PAIRS = 8


def reference_halves(
    synthetic_labels: torch.Tensor, reference_labels: torch.Tensor, num_classes: int, seed: int
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per class ``c``: rows of ``S_c``, ``A_c`` and ``B_c``, each ``n_c = min(|S_c|, floor(|R_c| / 2))`` long.

    The rows are seeded choices; ``A_c`` and ``B_c`` are disjoint.
    """
    rng = numpy_rng(seed, "reference halves")
    out = {}
    for c in range(num_classes):
        syn = np.flatnonzero(np.asarray(synthetic_labels) == c)
        ref = rng.permutation(np.flatnonzero(np.asarray(reference_labels) == c))
        n = min(len(syn), len(ref) // 2)
        out[c] = (np.sort(rng.choice(syn, n, replace=False)), np.sort(ref[:n]), np.sort(ref[n : 2 * n]))
    return out


def _rows(halves: dict[int, tuple[np.ndarray, ...]], part: int, classes: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(np.concatenate([halves[c][part] for c in classes]), dtype=torch.long)


def _groups(classes: Sequence[str], halves: dict[int, tuple[np.ndarray, ...]]) -> list[tuple[str, list[int]]]:
    """("all", every class) and (name, [c]) for each class."""
    return [("all", list(range(len(classes))))] + [(name, [c]) for c, name in enumerate(classes)]


def fidelity(
    synthetic: torch.Tensor, reference: torch.Tensor, halves: dict[int, tuple[np.ndarray, ...]],
    classes: Sequence[str], *, rounds: int, seed: int,
) -> dict[str, Any]:
    """``FD(S, A)`` with a bootstrap interval and the floor ``FD(B, A)``, overall and per class (module docstring)."""
    out: dict[str, Any] = {}
    for name, members in _groups(classes, halves):
        s, a, b = (x[_rows(halves, part, members)] for part, x in ((0, synthetic), (1, reference), (2, reference)))
        if len(s) < MIN_FD_IMAGES:
            out[name] = {"n": len(s), "fd": None, "interval": None, "floor": None,
                         "note": f"fewer than {MIN_FD_IMAGES} images on a side"}
            continue
        low, high = bootstrap_interval(frechet_between, s, a, rounds=rounds, seed=seed)
        fd, floor = frechet_between(s, a), frechet_between(b, a)
        interval = [max(0.0, 2 * fd - high), 2 * fd - low]
        out[name] = {"n": len(s), "fd": fd, "interval": interval, "floor": floor, "ratio_to_floor": fd / floor}
    return out


def coverage(
    synthetic: torch.Tensor, reference: torch.Tensor, halves: dict[int, tuple[np.ndarray, ...]],
    classes: Sequence[str], *, k: int = DEFAULT_K,
) -> dict[str, Any]:
    """Precision, recall, density and coverage of ``S`` and of ``B`` against ``A``, overall and per class."""
    out: dict[str, Any] = {}
    for name, members in _groups(classes, halves):
        s, a, b = (x[_rows(halves, part, members)] for part, x in ((0, synthetic), (1, reference), (2, reference)))
        if len(s) <= max(k, MIN_FD_IMAGES - 1):
            out[name] = {"n": len(s), "synthetic": None, "reference": None,
                         "note": f"needs more than {max(k, MIN_FD_IMAGES - 1)} images on a side"}
            continue
        row = {"n": len(s)}
        for key, fake in (("synthetic", s), ("reference", b)):
            precision, recall = precision_recall(a, fake, k)
            density, cover = density_coverage(a, fake, k)
            row[key] = {"precision": precision, "recall": recall, "density": density, "coverage": cover}
        out[name] = row
    return out


def confusion_matrix(intended: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``M[i, j] = #{n : intended_n = i, predicted_n = j}`` (int64 ``[C, C]``)."""
    flat = intended.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def label_fidelity(
    intended: torch.Tensor, predicted: torch.Tensor, classes: Sequence[str], real_recall: dict[str, float]
) -> dict[str, Any]:
    """Per-class agreement of a reference classifier's predictions with the intended classes, and the confusion.

    ``agreement_c = M[c, c] / sum_j M[c, j]``; ``mean`` is their mean over the
    classes present (the balanced accuracy of the classifier on the synthetic
    images); ``real_recall`` (the classifier's recall on real held-out
    images) is reported beside it as the ceiling.
    """
    matrix = confusion_matrix(intended, predicted, len(classes))
    support = matrix.sum(dim=1)
    agreement = {name: (float(matrix[c, c] / support[c]) if support[c] > 0 else None) for c, name in enumerate(classes)}
    present = [v for v in agreement.values() if v is not None]
    return {
        "agreement": agreement,
        "mean": float(np.mean(present)) if present else None,
        "real_recall": dict(real_recall),
        "confusion_matrix": matrix.tolist(),
        "n": int(matrix.sum()),
    }


def usefulness(real: dict[str, Any], synthetic: dict[str, Any]) -> dict[str, Any]:
    """``ratio = BA(train on synthetic) / BA(train on real)``, both on the same real held-out images."""
    real_ba, syn_ba = real["balanced_accuracy"], synthetic["balanced_accuracy"]
    return {
        "ratio": syn_ba / real_ba if real_ba > 0 else None,
        "train_on_synthetic": {key: synthetic[key] for key in ("balanced_accuracy", "auroc", "recall")},
        "train_on_real": {key: real[key] for key in ("balanced_accuracy", "auroc", "recall")},
    }


def memorisation_summary(result: Memorisation, pairs: int = CLOSEST_PAIRS) -> dict[str, Any]:
    """JSON-ready figures of one space: threshold, flagged images, distance medians and ratio, closest pairs."""
    order = torch.argsort(result.distances)[:pairs]
    flagged = torch.nonzero(result.flagged).flatten()
    return {
        "threshold": result.threshold,
        "flagged": int(result.flagged.sum()),
        "flagged_share": float(result.flagged.double().mean()),
        "flagged_rows": flagged[:100].tolist(),
        "median_distance": float(result.distances.median()),
        "median_training_distance": float(result.training_distances.median()),
        "ratio": result.ratio,
        "closest_pairs": [
            {"synthetic": int(j), "training": int(result.nearest[j]), "distance": float(result.distances[j])}
            for j in order
        ],
    }
