"""Deterministic random streams derived from a seed and integer keys.

Every random draw that must survive a resume or a change of batch size is
taken from a generator seeded by ``derive_seed(seed, *keys)`` (for instance
``(seed, iteration)`` or ``(seed, sample_index)``), so it depends on nothing
but those numbers. numpy draws (:func:`numpy_rng`) and single uniform numbers
(:func:`uniform`) come from the same derived seeds.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_TWO63 = float(1 << 63)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (SHA-256 based, stable across runs and platforms)."""
    text = ":".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def uniform(seed: int, *keys: int | str) -> float:
    """A number in [0, 1) from ``derive_seed(seed, *keys) / 2^63``."""
    return derive_seed(seed, *keys) / _TWO63


def numpy_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy ``Generator`` seeded with ``derive_seed(seed, *keys)``."""
    return np.random.default_rng(derive_seed(seed, *keys))


def generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g
