"""How tensors are computed on a device: bf16 autocast (``--amp auto|on|off``) and the memory layout.

bf16 autocast needs no loss scaling, so it is the only mode: ``auto`` turns it
on for CUDA devices that support bf16 (compute capability 8.0 and later:
A100, H100, H200, RTX 30xx/40xx) and leaves older GPUs (V100, T4) and CPUs in
fp32; ``on`` demands it and refuses a device without bf16 support.

Images and networks are ``channels_last`` on CUDA (the layout tensor cores
read without transposes) and keep the default NCHW layout on CPUs
(:func:`memory_layout`); every trainer asks this module, none decides itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Any

import torch

from .errors import UserError

AMP_CHOICES: tuple[str, ...] = ("auto", "on", "off")

log = logging.getLogger(__name__)


def add_amp_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--amp auto|on|off``, read by :func:`use_bf16_autocast`."""
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="bf16 autocast (auto: on for GPUs with native bf16)")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 autocast natively (CUDA only; CPUs emulate it slowly)."""
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):  # is_bf16_supported asks the current device
        return torch.cuda.is_bf16_supported(including_emulation=False)


def use_bf16_autocast(choice: str, device: torch.device) -> bool:
    """Resolve ``--amp`` (``auto``, ``on``, ``off``) for ``device``.

    ``on`` without bf16 support is a :class:`UserError`.
    """
    if choice not in AMP_CHOICES:
        raise UserError(f"--amp must be one of {', '.join(AMP_CHOICES)}, not {choice!r}")
    if choice == "off":
        return False
    supported = bf16_supported(device)
    if choice == "on" and not supported:
        raise UserError(f"--amp on: {device} has no native bf16 support; use --amp off (or auto)")
    if choice == "auto" and device.type == "cuda" and not supported:
        log.info("bf16 autocast is off: %s has no native bf16 support; training in fp32", device)
    return supported


def bf16_autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``amp`` (the resolved :func:`use_bf16_autocast`), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def memory_layout(device: torch.device) -> torch.memory_format:
    """``torch.channels_last`` on a CUDA device, ``torch.contiguous_format`` (NCHW) elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format
