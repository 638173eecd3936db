"""Learning-rate schedules stepped once per iteration.

:func:`cosine_decay` is the schedule of the downstream classifier and of
every pretext step: ``lr_t = lr * 0.5 * (1 + cos(pi * min(t, T) / T))`` for
iteration ``t`` of ``T``, from the base rate at ``t = 0`` to 0 at ``t = T``
and staying at 0 after it.
"""

from __future__ import annotations

import math

import torch


def cosine_factor(step: int, total_steps: int) -> float:
    """``0.5 * (1 + cos(pi * min(step, total_steps) / total_steps))``; ``total_steps`` must be positive."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def cosine_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` multiplying every group's rate by :func:`cosine_factor` of its step count.

    The factor is a plain function, so the scheduler's ``state_dict`` holds
    only its counters (a checkpoint stays loadable with ``weights_only``).
    A non-positive ``total_steps`` is a ``ValueError``.
    """
    if total_steps <= 0:
        raise ValueError(f"a cosine schedule needs a positive number of steps, not {total_steps}")

    def factor(step: int) -> float:
        return cosine_factor(step, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
