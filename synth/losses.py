"""StyleGAN2-ADA losses, regularisers and the generator EMA, as pure functions.

Notation: ``D(.)`` are discriminator logits, ``softplus(t) = log(1 + e^t)``.
Every loss is a mean over the batch; the caller weights and sums them. Logits
are promoted to fp32 before the softplus.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, beta: float) -> None:
    """``p_ema <- beta * p_ema + (1 - beta) * p`` for every parameter; buffers are copied.

    The two models must have the same parameter and buffer names (same architecture).
    """
    ema_params = dict(ema_model.named_parameters())
    params = dict(model.named_parameters())
    if ema_params.keys() != params.keys() or any(ema_params[n].shape != p.shape for n, p in params.items()):
        raise ValueError("ema_update: the models have different parameters")
    names = list(params)
    torch._foreach_lerp_([ema_params[n] for n in names], [params[n].detach() for n in names], 1.0 - beta)
    ema_buffers = dict(ema_model.named_buffers())
    buffers = dict(model.named_buffers())
    if ema_buffers.keys() != buffers.keys() or any(ema_buffers[n].shape != b.shape for n, b in buffers.items()):
        raise ValueError("ema_update: the models have different buffers")
    for name, buf in buffers.items():
        ema_buffers[name].copy_(buf)
