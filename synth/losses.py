"""StyleGAN2-ADA losses, regularisers, the two objectives the GAN trainer minimises and the EMA decay.

Notation: ``D(.)`` are discriminator logits, ``softplus(t) = log(1 + e^t)``.
Every loss is a mean over the batch; :func:`generator_objective` and
:func:`discriminator_objective` weight and sum them as one training step
does. Logits are promoted to fp32 before the softplus. The EMA update
itself is :func:`plumbing.ema.ema_update`; :func:`ema_beta` is the GAN's
decay.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating logistic generator loss ``E[softplus(-D(G(z)))] = -E[log sigmoid(D(G(z)))]``."""
    return F.softplus(-fake_logits.float()).mean()


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic discriminator loss ``E[softplus(D(G(z)))] + E[softplus(-D(x))]``."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def ac_loss(class_logits: Tensor, conditions: Tensor) -> Tensor:
    """Auxiliary-classifier (AC-GAN) loss: multi-label binary cross-entropy with logits.

    With class logits ``a`` ``[B, K]`` and the binary condition vectors ``c``
    ``[B, K]`` (each of the K condition values is its own binary label)::

        L_ac = mean_{b,k} BCE(sigmoid(a_bk), c_bk)
             = mean_{b,k} [ -c_bk log sigmoid(a_bk) - (1 - c_bk) log(1 - sigmoid(a_bk)) ]
             = mean_{b,k} [ softplus(a_bk) - c_bk a_bk ]

    so logits 0 give ``log 2`` whatever ``c``.
    """
    if class_logits.shape != conditions.shape:
        raise ValueError(f"class logits {tuple(class_logits.shape)} and conditions {tuple(conditions.shape)} differ")
    return F.binary_cross_entropy_with_logits(class_logits.float(), conditions.float())


def r1_penalty(real_logits: Tensor, real_images: Tensor, gamma: float) -> Tensor:
    """R1 gradient penalty ``(gamma / 2) * E_x[ ||grad_x D(x)||^2 ]``.

    ``real_images`` must require grad and be the tensor the logits were
    computed from (the un-augmented images when ADA is on: the gradient passes
    back through the augmentation). The graph is kept (``create_graph=True``)
    so the penalty can be back-propagated into D. Lazy regularisation (every
    ``k`` D steps, reference ``k = 16``) is the caller's: it multiplies this
    value by ``k`` on the steps that compute it.
    """
    (grads,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return 0.5 * gamma * grads.float().square().sum(dim=tuple(range(1, grads.ndim))).mean()


def generator_objective(fake_logits: Tensor, ac_fake: Tensor, ac_weight: float) -> Tensor:
    """The generator's loss of one step, before the path-length penalty (applied in its own backward pass)::

        L_G = E[softplus(-D(A(G(z, c)), c))] + w * L_ac(D_aux(A(G(z, c))), c)

    with ``fake_logits`` = ``D(A(G(z, c)), c)``, ``ac_fake`` = the
    auxiliary-classifier loss of the fakes (:func:`ac_loss`; a zero tensor
    without a classifier) and ``w`` = ``ac_weight`` (0: plain conditional
    GAN; the term is still added, as zero).
    """
    return g_nonsaturating_loss(fake_logits) + ac_weight * ac_fake


def discriminator_objective(
    real_logits: Tensor, fake_logits: Tensor, ac_real: Tensor, ac_weight: float, lazy_r1: Tensor | None = None
) -> Tensor:
    """The discriminator's loss of one step::

        L_D = E[softplus(D(A(G(z, c)), c))] + E[softplus(-D(A(x), c))] + w * L_ac(D_aux(A(x)), c) [+ k * R1]

    ``ac_real`` is the auxiliary-classifier loss of the reals (zero without a
    classifier), ``w`` = ``ac_weight``; ``lazy_r1`` is ``k * R1`` on the
    steps that compute the penalty (:func:`r1_penalty` times the interval
    ``k``), ``None`` on the others. The terms are added in this order.
    """
    loss = d_logistic_loss(real_logits, fake_logits) + ac_weight * ac_real
    return loss if lazy_r1 is None else loss + lazy_r1


class PathLength(NamedTuple):
    """Result of :func:`path_length_penalty`."""

    penalty: Tensor
    """``E[(lengths - pl_mean_new)^2]`` (scalar, differentiable in the generator)."""
    pl_mean: Tensor
    """Updated running mean (detached), to store back."""
    lengths: Tensor
    """Per-sample path lengths ``[B]`` (for logging)."""


def path_length_penalty(
    fake_images: Tensor,
    ws: Tensor,
    pl_mean: Tensor,
    *,
    decay: float = 0.01,
    generator: torch.Generator | None = None,
) -> PathLength:
    """StyleGAN2 path-length regulariser.

    With ``y ~ N(0, I) / sqrt(H W)`` (one draw per pixel) and ``J_w`` the
    Jacobian of the image with respect to ``ws`` ``[B, num_ws, w_dim]``::

        g        = grad_ws sum(G(ws) * y)              # J_w^T y
        length_b = sqrt( mean_k sum_d g[b, k, d]^2 )
        a'       = lerp(pl_mean, mean_b(length), decay) = pl_mean + decay * (mean(length) - pl_mean)
        penalty  = mean_b (length_b - a')^2

    ``a'`` keeps its dependence on the lengths, as the reference does; the
    value returned as ``pl_mean`` is ``a'`` detached. The caller multiplies the
    penalty by ``pl_weight`` (reference 2) and by the lazy interval (reference
    4). The running mean depends on the resolution, so it is best reset when
    the resolution changes during progressive growing.
    """
    if ws.ndim != 3:
        raise ValueError(f"ws must be [B, num_ws, w_dim], got {tuple(ws.shape)}")
    height, width = fake_images.shape[-2:]
    noise = torch.randn(
        fake_images.shape, generator=generator, device=fake_images.device, dtype=torch.float32
    ) / math.sqrt(height * width)
    (grads,) = torch.autograd.grad((fake_images.float() * noise).sum(), ws, create_graph=True)
    lengths = grads.float().square().sum(dim=2).mean(dim=1).sqrt()
    new_mean = pl_mean.to(lengths.dtype).lerp(lengths.mean(), decay)
    penalty = (lengths - new_mean).square().mean()
    return PathLength(penalty=penalty, pl_mean=new_mean.detach(), lengths=lengths.detach())


def ema_beta(batch_size: int, ema_kimg: float, *, cur_nimg: int | None = None, rampup: float | None = None) -> float:
    """EMA decay per step: ``beta = 0.5 ** (batch_size / (ema_kimg * 1000))`` (half-life ``ema_kimg`` kimg).

    With ``rampup`` the half-life is capped at ``cur_nimg * rampup`` images
    (the reference 'auto' setting uses 0.05), so early snapshots follow quickly.
    """
    ema_nimg = ema_kimg * 1000.0
    if rampup is not None:
        if cur_nimg is None:
            raise ValueError("ema_beta with rampup needs cur_nimg")
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))
