"""Per-sample random streams of the phantom renderer.

Every sample of a batch owns a ``torch.Generator`` seeded with its own 63-bit
seed, so a sample's image depends only on its seed, its finding vector and
the resolution, never on the batch it is rendered in. From that generator, in
this fixed order, it draws:

1. ``N_UNIFORM`` uniforms in [0, 1): every scalar parameter (anatomy, finding
   placement, style) is one named column of this block;
2. ``N_COARSE`` coarse Gaussian fields of ``COARSE x COARSE`` cells (smooth
   opacities, texture);
3. ``N_FINE`` anisotropic Gaussian fields of ``FINE_H x FINE_W`` cells
   (vessel and reticular patterns);
4. one Gaussian field at the output resolution (detector noise).

Blocks 1-3 do not depend on the resolution, so a sample keeps its anatomy and
findings at every resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

N_UNIFORM = 320
N_COARSE = 4
COARSE = 24
N_FINE = 3
FINE_H, FINE_W = 96, 24


class Draws:
    """The uniforms of a batch, handed out column by column in a fixed order.

    ``take(n)`` returns the next ``n`` columns ``[B, n]``; callers take their
    columns unconditionally (also for samples that will not use them) so a
    sample's parameters never depend on the other samples or on which
    findings are present.
    """

    def __init__(self, uniform: torch.Tensor) -> None:
        self.uniform = uniform
        self.used = 0

    def take(self, n: int) -> torch.Tensor:
        if self.used + n > self.uniform.shape[1]:
            raise RuntimeError(f"the phantom renderer needs more than {self.uniform.shape[1]} uniforms per sample")
        out = self.uniform[:, self.used : self.used + n]
        self.used += n
        return out

    def range(self, lo: float, hi: float, n: int = 1) -> torch.Tensor:
        """``n`` columns uniform in [lo, hi), ``[B, n]`` (``[B]`` when ``n == 1``)."""
        out = lo + (hi - lo) * self.take(n)
        return out[:, 0] if n == 1 else out


def first_uniforms(seeds: Sequence[int]) -> torch.Tensor:
    """Block 1 (the uniforms) of each seed's stream, ``[B, N_UNIFORM]``, without the noise fields."""
    return torch.stack([torch.rand(N_UNIFORM, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


class Streams:
    """All random draws of a batch (see the module docstring)."""

    def __init__(self, seeds: Sequence[int], resolution: int, device: torch.device) -> None:
        uniform, coarse, fine, pixel = [], [], [], []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            uniform.append(torch.rand(N_UNIFORM, generator=g))
            coarse.append(torch.randn(N_COARSE, COARSE, COARSE, generator=g))
            fine.append(torch.randn(N_FINE, FINE_H, FINE_W, generator=g))
            pixel.append(torch.randn(1, resolution, resolution, generator=g))
        self.draws = Draws(torch.stack(uniform).to(device))
        self.coarse = torch.stack(coarse).to(device)
        self.fine = torch.stack(fine).to(device)
        self.pixel = torch.stack(pixel).to(device)
