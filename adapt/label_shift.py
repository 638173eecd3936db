"""Label shift: estimating a target's class prior without its labels, weighting towards it, and simulating it.

Label shift (prior shift) assumes that the class-conditional image
distribution is the same in both domains, ``p_s(x | y) = p_t(x | y)``, and
only the class prior differs, ``p_s(y) != q(y) = p_t(y)``. Then the target
prior can be estimated from a source-trained classifier's outputs on
unlabelled target images, and the source side of an alignment term weighted
by ``w_y = q(y) / p_s(y)`` so that the weighted source has the target's class
mix (Yan et al. 2017; Tachet des Combes et al. 2020). Two estimators, both
pure functions of a network's outputs (:class:`adapt.outputs.Outputs`):

* :func:`bbse_prior` - black-box shift estimation (Lipton et al. 2018) from
  the joint confusion matrix on labelled source validation images and the
  predicted class marginal on target images;
* :func:`em_prior` - the EM algorithm of Saerens et al. (2002) on
  probabilities calibrated by temperature scaling (:func:`fit_temperature`).

To study how a method degrades under shift, :func:`parse_target_prior` reads
``--target-prior`` and :func:`resample_to_prior` draws the largest subset of
a labelled set whose class counts follow the asked prior (as RLSbench,
Garg et al. 2023, simulates shifts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from plumbing.errors import UserError
from plumbing.seeding import numpy_rng

TEMPERATURE_RANGE = (0.05, 20.0)
"""The temperatures :func:`fit_temperature` searches (a fit at an end means the NLL falls beyond it)."""
PRIOR_SUM_TOLERANCE = 1e-3
"""How far from 1 the sum of a ``--target-prior P1,P2,...`` may be (the prior is then divided by its sum)."""
TARGET_PRIORS = ("natural", "balanced", "P1,P2,...", "dirichlet:ALPHA")
PRIOR_FLOOR = 1e-3
"""The least share of a class in an estimated prior that training is corrected towards (:func:`floored_prior`)."""
RELIABLE_CONDITIONING = 0.2
"""The least :func:`confusion_conditioning` at which a prior correction trusts an evaluation's estimates."""


def joint_confusion(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[i, j] = P(yhat = i, y = j)``: the share of the ``N`` images predicted ``i`` whose label is ``j``.

    ``[C, C]`` float64 summing to 1 (all zeros for ``N = 0``); its column sums
    are the labels' prior ``p(y)`` and its row sums the predicted marginal.
    """
    counts = torch.bincount(predicted.long() * num_classes + labels.long(), minlength=num_classes * num_classes)
    return counts.double().reshape(num_classes, num_classes) / max(len(labels), 1)


def class_shares(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C]`` float64: the share of the ``N`` entries of ``classes`` equal to each class (zeros for ``N = 0``).

    Of labels, a set's class prior; of predictions ``yhat``, the predicted
    marginal ``mu[i] = P(yhat = i)``.
    """
    return torch.bincount(classes.long(), minlength=num_classes).double() / max(len(classes), 1)


def bbse_prior(confusion: torch.Tensor, target_marginal: torch.Tensor) -> torch.Tensor:
    """Black-box shift estimate of the target prior ``q`` (Lipton et al. 2018).

    Under label shift the classifier's ``P(yhat | y)`` is the same in both
    domains, so ``mu_t[i] = sum_j P(yhat = i | y = j) q(j) = sum_j C[i, j] w_j``
    with ``C`` the joint confusion matrix on source validation images
    (:func:`joint_confusion`) and ``w_j = q(j) / p_val(j)``. The estimate::

        w = argmin_w ||C w - mu_t||^2   (minimum-norm least squares, pinv(C) mu_t)
        w <- max(w, 0)
        q = w * p_val / sum_j (w_j p_val(j)),   p_val(j) = sum_i C[i, j]

    Failure modes: a singular ``C`` (a class never predicted, or never in
    the validation set, or two classes confused alike) leaves part of ``w``
    unidentified; the pseudo-inverse takes the minimum-norm solution, and a
    class absent from the validation set (``p_val(j) = 0``) gets ``q(j) = 0``.
    Sampling noise can make ``w`` negative, which the clip removes (the
    estimator is consistent, not unbiased). When nothing positive is left
    (``sum_j w_j p_val(j) = 0``, e.g. ``mu_t`` or ``C`` all zeros) there is no
    evidence of a shift and the result is ``p_val`` itself (uniform if the
    validation set is empty).

    Args:
        confusion: ``[C, C]`` joint confusion matrix, entries summing to 1.
        target_marginal: ``[C]`` predicted class shares on target images.

    Returns:
        ``[C]`` float64, non-negative, summing to 1.
    """
    c = confusion.double()
    mu = target_marginal.double()
    validation_prior = c.sum(dim=0)
    w = (torch.linalg.pinv(c) @ mu).clamp(min=0)
    weighted = w * validation_prior
    if float(weighted.sum()) <= 0:
        if float(validation_prior.sum()) <= 0:
            return torch.full_like(mu, 1 / len(mu))
        return validation_prior / validation_prior.sum()
    return weighted / weighted.sum()


def confusion_conditioning(confusion: torch.Tensor) -> float:
    """``sigma_min`` of the class-conditional confusion matrix ``M[i, j] = P(yhat = i | y = j) = C[i, j] / p_val(j)``.

    Over the classes present in the validation set (``p_val(j) > 0``; none:
    0). 1 for a classifier that is always right, 0 for one whose predictions
    do not depend on the class (every column alike, e.g. chance or one class
    predicted for all). The error bound of BBSE grows with ``1 / sigma_min``
    (Lipton et al. 2018, Theorem 3), and EM from a classifier near chance is
    as unfounded, so a prior correction uses an evaluation's estimates only
    when this is at least :data:`RELIABLE_CONDITIONING`; for two classes
    ``sigma_min sigma_max = |det M| = TPR + TNR - 1`` (Youden's J).
    """
    c = confusion.double()
    present = c.sum(dim=0) > 0
    if not bool(present.any()):
        return 0.0
    conditional = c[:, present] / c.sum(dim=0)[present]
    return float(torch.linalg.svdvals(conditional).min())


def _temperature_slope(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> float:
    """``d/d beta`` of the mean NLL of ``softmax(beta z)``: ``mean_i (sum_c p_ic z_ic - z_i,y_i)``."""
    p = torch.softmax(beta * logits, dim=1)
    return float(((p * logits).sum(dim=1) - logits.gather(1, labels[:, None]).squeeze(1)).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 60) -> float:
    """The temperature ``T`` of temperature scaling (Guo et al. 2017): ``argmin_T NLL(softmax(z / T), y)``.

    With ``beta = 1 / T`` the mean negative log-likelihood
    ``L(beta) = mean_i [ logsumexp(beta z_i) - beta z_i,y_i ]`` is convex in
    ``beta`` (its second derivative is the variance of ``z_i`` under
    ``softmax(beta z_i)``), so its minimum is where the slope
    ``mean_i [ sum_c p_ic z_ic - z_i,y_i ]`` crosses zero; it is found by
    ``iterations`` bisections of ``beta`` in ``1 / TEMPERATURE_RANGE``
    (:data:`TEMPERATURE_RANGE`; 60 halvings reach float64 precision).
    When the slope keeps its sign over the range the nearer end is returned:
    ``T`` at its low end when the NLL falls further with sharper
    probabilities (every image already right, e.g. separable data), at its
    high end when it falls further with flatter ones. No labelled image
    (``N = 0``) gives ``T = 1``.

    Args:
        logits: ``[N, C]`` logits of labelled images.
        labels: ``[N]`` their classes.
    """
    if len(labels) == 0:
        return 1.0
    z, y = logits.double(), labels.long()
    low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
    if _temperature_slope(z, y, low) >= 0:
        return TEMPERATURE_RANGE[1]
    if _temperature_slope(z, y, high) <= 0:
        return TEMPERATURE_RANGE[0]
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if _temperature_slope(z, y, middle) < 0 else (low, middle)
    return 2 / (low + high)


def em_prior(
    probabilities: torch.Tensor, train_prior: torch.Tensor, tolerance: float = 1e-8, max_iterations: int = 1000
) -> torch.Tensor:
    """The EM estimate of the target prior ``q`` (Saerens, Latinne and Decaestecker 2002).

    ``p(y | x)`` are calibrated probabilities of a classifier trained under
    the prior ``p_tr`` (here source batches, class-balanced: uniform).
    Starting from ``q_0 = p_tr``, each iteration re-weights every image's
    posterior by the prior ratio and takes the new prior as their mean::

        p'(y | x_i) = (q_k(y) / p_tr(y)) p(y | x_i) / sum_y' (q_k(y') / p_tr(y')) p(y' | x_i)
        q_{k+1}(y)  = (1 / N) sum_i p'(y | x_i)

    until ``max_y |q_{k+1}(y) - q_k(y)| < tolerance`` or ``max_iterations``
    (the likelihood of the target images rises at every step; it converges
    to a local maximum). A class with ``p_tr(y) = 0`` keeps ``q(y) = 0``.
    Miscalibrated probabilities bias the estimate (hence
    :func:`fit_temperature` first); no image (``N = 0``) returns ``p_tr``.

    Args:
        probabilities: ``[N, C]`` calibrated class probabilities of target images.
        train_prior: ``[C]`` the prior the classifier was trained under (sums to 1).

    Returns:
        ``[C]`` float64 summing to 1.
    """
    p = probabilities.double()
    prior = train_prior.double()
    q = prior.clone()
    if len(p) == 0:
        return q
    ratio_base = torch.where(prior > 0, 1 / prior.clamp(min=1e-300), torch.zeros_like(prior))
    for _ in range(max_iterations):
        weighted = p * (q * ratio_base)[None, :]
        posterior = weighted / weighted.sum(dim=1, keepdim=True).clamp(min=1e-300)
        new = posterior.mean(dim=0)
        new = new / new.sum()
        done = float((new - q).abs().max()) < tolerance
        q = new
        if done:
            break
    return q


def estimate_priors(
    validation_logits: torch.Tensor, validation_labels: torch.Tensor, target_logits: torch.Tensor,
    train_prior: torch.Tensor,
) -> dict[str, Any]:
    """Both estimates of the target prior from one network's logits on labelled source validation images and on
    unlabelled target images: ``{"bbse": [q...], "em": [q...], "temperature": T, "conditioning": s}``.

    ``bbse``: :func:`bbse_prior` of the validation images' joint confusion
    matrix and the target's predicted marginal (predictions: the arg-max
    logits). ``em``: :func:`em_prior` of the target probabilities
    ``softmax(z / T)``, ``T`` fitted on the validation images
    (:func:`fit_temperature`), under ``train_prior``. ``conditioning``:
    :func:`confusion_conditioning` of the validation confusion matrix, how far
    the estimates can be trusted.
    """
    c = len(train_prior)
    confusion = joint_confusion(validation_logits.argmax(dim=1), validation_labels, c)
    bbse = bbse_prior(confusion, class_shares(target_logits.argmax(dim=1), c))
    temperature = fit_temperature(validation_logits, validation_labels)
    em = em_prior(torch.softmax(target_logits.double() / temperature, dim=1), train_prior)
    return {"bbse": bbse.tolist(), "em": em.tolist(), "temperature": temperature,
            "conditioning": confusion_conditioning(confusion)}


def class_weights(prior: torch.Tensor, source_prior: torch.Tensor) -> torch.Tensor:
    """``w_y = q(y) / p_s(y)``: the weight of a source image of class ``y`` so the weighted source has prior ``q``.

    ``p_s`` is the class prior of the source batches (uniform over the
    source's classes for class-balanced batches); a class with ``p_s(y) = 0``
    never appears in a batch and gets ``w_y = 0``.
    """
    p_s = source_prior.double()
    return torch.where(p_s > 0, prior.double() / p_s.clamp(min=1e-300), torch.zeros_like(p_s))


def floored_prior(prior: torch.Tensor, floor: float) -> torch.Tensor:
    """``max(q, floor)`` renormalised to sum 1: an estimate made safe to divide by and take the log of.

    An estimated ``q(y) = 0`` (BBSE clips ``w`` at 0) would give the diversity
    term towards ``q`` an infinite value and the class a zero weight on
    evidence from a small sample; the floor keeps every class in play.
    """
    q = prior.double().clamp(min=floor)
    return q / q.sum()


def parse_target_prior(text: str, num_classes: int, seed: int) -> np.ndarray | None:
    """The class prior ``--target-prior text`` asks for (``None`` for ``natural``: leave the images as they are).

    * ``natural`` - ``None``;
    * ``balanced`` - ``1 / C`` for every class;
    * ``P1,P2,...`` - one non-negative share per class, in the task's class
      order, summing to 1 within :data:`PRIOR_SUM_TOLERANCE` (divided by
      their sum);
    * ``dirichlet:ALPHA`` - a draw from ``Dirichlet(ALPHA, ..., ALPHA)``
      (``ALPHA > 0``; small ``ALPHA`` gives strong shifts) with the generator
      ``numpy_rng(seed, "target prior")``, so each run seed has its own prior.

    Raises:
        UserError: one line for text of none of these forms, a wrong count, a
            negative or non-finite share, a sum off 1, or ``ALPHA <= 0``.
    """
    option = f"--target-prior {text!r}"
    if text == "natural":
        return None
    if text == "balanced":
        return np.full(num_classes, 1 / num_classes)
    if text.startswith("dirichlet:"):
        try:
            alpha = float(text.split(":", 1)[1])
        except ValueError:
            alpha = math.nan
        if not (math.isfinite(alpha) and alpha > 0):
            raise UserError(f"{option}: dirichlet:ALPHA needs a finite ALPHA > 0")
        return numpy_rng(seed, "target prior").dirichlet(np.full(num_classes, alpha))
    try:
        shares = np.array([float(item) for item in text.split(",")])
    except ValueError:
        raise UserError(f"{option} must be one of {' | '.join(TARGET_PRIORS)}") from None
    if len(shares) != num_classes:
        raise UserError(f"{option} gives {len(shares)} shares; the task has {num_classes} classes")
    if not (np.isfinite(shares).all() and (shares >= 0).all()):
        raise UserError(f"{option}: every share must be a finite number >= 0")
    if abs(shares.sum() - 1) > PRIOR_SUM_TOLERANCE:
        raise UserError(f"{option}: the shares sum to {shares.sum():g}, not 1")
    return shares / shares.sum()


def resample_to_prior(labels: np.ndarray, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the largest subset of ``labels``, without replacement, whose class counts follow ``prior``.

    The rule: with ``n_c`` images of class ``c``, the subset holds
    ``N = min_{c: prior_c > 0} floor(n_c / prior_c)`` images; class ``c``
    gets ``floor(N prior_c)`` of them, and the ``N - sum_c floor(N prior_c)``
    left over go one each to the classes with the largest fractional parts
    ``N prior_c - floor(N prior_c)`` (ties to the lower class), which never
    asks for more than ``n_c`` (``N prior_c <= n_c``). The images of each
    class are a uniform draw (a permutation from ``rng``). A class of the
    prior with no image gives ``N = 0``: an empty subset.

    Args:
        labels: ``[N]`` class of every image (all ``>= 0``).
        prior: ``[C]`` non-negative shares summing to 1.
        rng: the seeded generator of the draw (:func:`plumbing.seeding.numpy_rng`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(prior))[: len(prior)]
    wanted = prior > 0
    total = int(np.floor(np.min(counts[wanted] / prior[wanted]) + 1e-9)) if wanted.any() else 0
    exact = total * prior
    take = np.floor(exact + 1e-9).astype(np.int64)
    left = total - int(take.sum())
    if left > 0:
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:left]] += 1
    take = np.minimum(take, counts)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in range(len(prior))]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
