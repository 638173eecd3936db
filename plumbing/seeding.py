"""Deterministic random streams derived from a seed and integer keys.

Every random draw that must survive a resume or a change of batch size is
taken from a generator seeded by ``derive_seed(seed, *keys)`` (for instance
``(seed, iteration)`` or ``(seed, sample_index)``), so it depends on nothing
but those numbers.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (SHA-256 based, stable across runs and platforms)."""
    text = ":".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g
