"""Exponential moving average of a network's parameters: the GAN's EMA generator, MoCo's key encoder.

:func:`ema_update` moves every parameter of ``average`` toward the same
parameter of ``model``::

    theta_avg <- decay * theta_avg + (1 - decay) * theta

computed in that order (a multiplication, then an addition scaled by
``1 - decay``, for all parameters at once). ``decay = 0`` copies the model;
``decay = 1`` leaves the average as it is. Buffers (batch-norm statistics,
fixed noise) are copied from ``model`` with ``buffers="copy"`` (the GAN's EMA
generator: its buffers are the trained ones) or left alone with
``buffers="keep"`` (MoCo's key encoder keeps the running statistics of its
own forward passes).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def _same_shapes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[n].shape == b[n].shape for n in a)


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float, *, buffers: Literal["copy", "keep"]) -> None:
    """Move ``average``'s parameters toward ``model``'s by ``decay`` (module docstring).

    The two modules must have the same parameter (and, with
    ``buffers="copy"``, buffer) names and shapes; otherwise ``ValueError``.
    """
    if buffers not in ("copy", "keep"):
        raise ValueError(f"buffers must be 'copy' or 'keep', not {buffers!r}")
    averaged, current = dict(average.named_parameters()), dict(model.named_parameters())
    if not _same_shapes(averaged, current):
        raise ValueError("ema_update: the models have different parameters")
    names = list(current)
    targets = [averaged[n] for n in names]
    torch._foreach_mul_(targets, decay)
    torch._foreach_add_(targets, [current[n].detach() for n in names], alpha=1.0 - decay)
    if buffers == "keep":
        return
    averaged_buffers, current_buffers = dict(average.named_buffers()), dict(model.named_buffers())
    if not _same_shapes(averaged_buffers, current_buffers):
        raise ValueError("ema_update: the models have different buffers")
    for name, buf in current_buffers.items():
        averaged_buffers[name].copy_(buf)
