"""The loss terms of domain-conditioned channel attention (DCAN, Li et al. 2020), as pure functions.

Notation: ``B`` images per domain in a step, ``C`` classes, ``f`` pooled
backbone features, ``h`` the linear classifier, ``f^ = f + dF(f)`` and
``g^ = h(f^) + dG(h(f^))`` the corrected features and logits
(:meth:`models.backbones.Classifier.corrected`), ``p = softmax``.
Subscripts ``s`` and ``t`` are the source and target halves of a batch.

The objective (:func:`total_loss`)::

    L = CE(h(f_s), y_s)
        + alpha * ( w_fm * MMD_K(f_s, f^_t) + w_om * MMD_1(p(h(f_s)), p(g^_t)) + w_reg * R )
        + beta * H(p(g^_t)) - gamma * D(p(g^_t))

with the official weights ``alpha = 1.5``, ``beta = 0.1``, ``w_fm = w_om =
w_reg = 1``, ``gamma = 0`` (the diversity term ``D`` is this project's
addition against collapse, off by default).

With a label-shift correction (:mod:`adapt.label_shift`, off by default)
each source image of class ``y`` weighs ``w_y = q(y) / p_s(y)`` on the
source side of both MMD terms (:func:`weighted_mk_mmd`), and ``D`` becomes
``D_q = -KL(pbar || q)`` (:func:`prior_diversity`), which pulls the mean
target prediction towards the estimated target prior ``q`` instead of the
uniform one; the correction regulariser ``R`` (source images alone) is
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

KERNELS = 5
MULTIPLIER = 2.0
OUTPUT_BANDWIDTH = 1.68
"""The fixed bandwidth of the one Gaussian kernel of the output-level MMD (official value)."""


def gaussian_kernels(
    joint: torch.Tensor, kernels: int = KERNELS, multiplier: float = MULTIPLIER, bandwidth: float | None = None
) -> torch.Tensor:
    """``K[i, j] = sum_{q=0}^{kernels-1} exp(-||z_i - z_j||^2 / (sigma * multiplier^q))`` over the rows of ``joint``.

    ``sigma`` is ``bandwidth`` when given, else the mean squared distance of
    distinct pairs of rows divided by ``multiplier^floor(kernels / 2)`` (so the
    middle kernel has the mean distance), computed without gradient, as the
    DAN/DCAN reference code does. Distances come from ``|a|^2 + |b|^2 - 2 a.b``
    (memory ``[n, n]``, not ``[n, n, d]``).
    """
    z = joint.float().flatten(1)
    norms = z.pow(2).sum(dim=1)
    squared = (norms[:, None] + norms[None, :] - 2 * z @ z.T).clamp(min=0)
    if bandwidth is None:
        n = z.shape[0]
        sigma = squared.detach().sum() / max(n * n - n, 1) / multiplier ** (kernels // 2)
        sigma = sigma.clamp(min=1e-12)
    else:
        sigma = torch.tensor(float(bandwidth), device=z.device)
    return sum(torch.exp(-squared / (sigma * multiplier**q)) for q in range(kernels))


def mk_mmd(
    source: torch.Tensor, target: torch.Tensor, *, kernels: int = KERNELS, multiplier: float = MULTIPLIER,
    bandwidth: float | None = None,
) -> torch.Tensor:
    """Multi-kernel maximum mean discrepancy between two samples ``[n, d]`` (:func:`gaussian_kernels`).

    The linear-time estimator of the DAN/DCAN reference code, over the ``n``
    cyclic pairs ``i, j = (i + 1) mod n``::

        MMD = (1 / n) * sum_i [ k(s_i, s_j) + k(t_i, t_j) - k(s_i, t_j) - k(s_j, t_i) ]

    (for ``n = 1``, ``j = i`` and the term is ``k(s, s) + k(t, t) - 2 k(s, t)``).
    Both samples are cut to the smaller size ``n``; the bandwidth comes from
    the joint sample of both.
    """
    n = min(len(source), len(target))
    if n < 1:
        return source.new_zeros(()).float()
    k = gaussian_kernels(torch.cat([source[:n], target[:n]]), kernels, multiplier, bandwidth)
    i = torch.arange(n, device=k.device)
    j = (i + 1) % n
    return (k[i, j] + k[i + n, j + n] - k[i, j + n] - k[j, i + n]).mean()


def weighted_mk_mmd(
    source: torch.Tensor, target: torch.Tensor, source_weights: torch.Tensor, *, kernels: int = KERNELS,
    multiplier: float = MULTIPLIER, bandwidth: float | None = None,
) -> torch.Tensor:
    """:func:`mk_mmd` with a weight per source image: the MMD between the re-weighted source and the target.

    The weights ``w`` of the ``n`` source images used are normalised by their
    mean, ``v_i = w_i / ((1/n) sum_k w_k)`` (so only their ratios matter and
    all ``w_i = 1`` gives exactly :func:`mk_mmd`), and enter the same cyclic
    pairs ``j = (i + 1) mod n`` (weighted MMD, Yan et al. 2017)::

        MMD_w = (1 / n) * sum_i [ v_i v_j k(s_i, s_j) + k(t_i, t_j) - v_i k(s_i, t_j) - v_j k(s_j, t_i) ]

    An estimate of the MMD between the source distribution re-weighted by
    ``w`` and the target (each source pair's kernel mean is weighted by the
    product of its weights). The bandwidth comes from the unweighted joint
    sample, as in :func:`mk_mmd`; the weights carry no gradient. When every
    weight of the batch is 0 the weighting says nothing and the plain
    :func:`mk_mmd` is returned.

    Args:
        source: ``[n_s, d]``; target: ``[n_t, d]`` (both cut to ``n = min(n_s, n_t)``).
        source_weights: ``[n_s]`` non-negative weights of the source rows.
    """
    n = min(len(source), len(target))
    if n < 1:
        return source.new_zeros(()).float()
    w = source_weights[:n].detach().float().to(source.device)
    if float(w.sum()) <= 0:
        return mk_mmd(source, target, kernels=kernels, multiplier=multiplier, bandwidth=bandwidth)
    v = w / w.mean()
    k = gaussian_kernels(torch.cat([source[:n], target[:n]]), kernels, multiplier, bandwidth)
    i = torch.arange(n, device=k.device)
    j = (i + 1) % n
    return (v[i] * v[j] * k[i, j] + k[i + n, j + n] - v[i] * k[i, j + n] - v[j] * k[j, i + n]).mean()


def source_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``CE = -(1/B) sum_i log p(h(f_s,i))[y_i]`` on the uncorrected source logits."""
    return F.cross_entropy(logits.float(), labels)


def target_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H = -(1/B) sum_i sum_c p_ic log p_ic`` of the softmax of the (corrected) target logits."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def prediction_diversity(logits: torch.Tensor) -> torch.Tensor:
    """``D = -sum_c pbar_c log pbar_c`` with ``pbar = (1/B) sum_i p_i``: the entropy of the mean prediction.

    Maximal (``log C``) when the batch's predictions are spread evenly over
    the classes, 0 when every image gets the same one-hot prediction; it is
    subtracted from the loss (SHOT / information maximisation), so it pushes
    against a collapse onto one class.
    """
    mean = F.softmax(logits.float(), dim=1).mean(dim=0)
    return -(mean * torch.log(mean.clamp(min=1e-12))).sum()


def prior_diversity(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``D_q = -KL(pbar || q) = -sum_c pbar_c log(pbar_c / q_c)``: how close the mean prediction is to the prior ``q``.

    ``pbar = (1/B) sum_i p_i`` as in :func:`prediction_diversity`; maximal (0)
    when ``pbar = q``. For the uniform ``q`` it is ``D - log C``: the same
    gradient as :func:`prediction_diversity`. ``q`` must be positive where
    ``pbar`` is (:func:`adapt.label_shift.floored_prior`); ``0 log 0 = 0``.
    """
    mean = F.softmax(logits.float(), dim=1).mean(dim=0)
    q = prior.to(mean.device, torch.float32)
    return -(mean * (torch.log(mean.clamp(min=1e-12)) - torch.log(q.clamp(min=1e-12)))).sum()


def alignment_mmd(
    source_features: torch.Tensor, corrected_target_features: torch.Tensor, source_logits: torch.Tensor,
    corrected_target_logits: torch.Tensor, source_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(MMD_K(f_s, f^_t), MMD_1(p(h(f_s)), p(g^_t)))``: five kernels on features, one of bandwidth 1.68 on outputs.

    With ``source_weights`` (``[B]``, the class weight ``w_{y_s}`` of every
    source image) both are :func:`weighted_mk_mmd`.
    """
    source_outputs = F.softmax(source_logits.float(), dim=1)
    target_outputs = F.softmax(corrected_target_logits.float(), dim=1)
    if source_weights is None:
        features = mk_mmd(source_features, corrected_target_features)
        outputs = mk_mmd(source_outputs, target_outputs, kernels=1, bandwidth=OUTPUT_BANDWIDTH)
    else:
        features = weighted_mk_mmd(source_features, corrected_target_features, source_weights)
        outputs = weighted_mk_mmd(source_outputs, target_outputs, source_weights, kernels=1,
                                  bandwidth=OUTPUT_BANDWIDTH)
    return features, outputs


def correction_regulariser(
    features: torch.Tensor, corrected_features: torch.Tensor, logits: torch.Tensor, corrected_logits: torch.Tensor,
    labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The feature-correction regulariser on source images (the term "Our Alignment" drops)::

        R = (1 / C) * sum_{k in batch} [ MMD_K(f_s[y = k], f^_s[S_k]) + MMD_1(h(f_s)[y = k], g^_s[S_k]) ]

    ``f^_s``, ``g^_s`` are the corrected features and logits of the source
    images, ``S_k`` a random subset of ``n_k`` source images (drawn with
    ``generator``), and the output-level term compares logits with one kernel
    of bandwidth 1.68, as the reference code does: the corrections must not
    move source images away from their classes.
    """
    total = features.new_zeros(()).float()
    device = labels.device
    for k in range(num_classes):
        members = torch.nonzero(labels == k).flatten()
        if len(members) == 0:
            continue
        subset = torch.randperm(len(labels), generator=generator)[: len(members)].to(device)
        total = total + mk_mmd(features[members], corrected_features[subset])
        total = total + mk_mmd(logits[members].float(), corrected_logits[subset].float(), kernels=1,
                               bandwidth=OUTPUT_BANDWIDTH)
    return total / num_classes


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float], alpha: float) -> torch.Tensor:
    """``CE + alpha * (w_fm MMD_f + w_om MMD_o + w_reg R) + w_entropy H - w_diversity D`` (module docstring).

    ``terms`` holds the computed terms (``cross_entropy``, ``feature_mmd``,
    ``output_mmd``, ``regulariser``, ``entropy``, ``diversity``; a term whose
    weight is 0 may be absent); ``weights`` their weights. Under a label-shift
    correction the MMD terms are the class-weighted ones and ``diversity`` is
    ``D_q`` (module docstring): the sum is the same.
    """
    loss = terms["cross_entropy"].float()
    for name in ("feature_mmd", "output_mmd", "regulariser"):
        if weights[name]:
            loss = loss + alpha * weights[name] * terms[name]
    if weights["entropy"]:
        loss = loss + weights["entropy"] * terms["entropy"]
    if weights["diversity"]:
        loss = loss - weights["diversity"] * terms["diversity"]
    return loss
