"""Shape primitives evaluated on coordinate grids (all vectorised over ``[B, H, W]``).

Coordinates are continuous: the image spans [-1, 1] in x (left to right) and y
(top to bottom), pixel centres at ``(i + 0.5) / n * 2 - 1``. Edges are
anti-aliased by linear ramps about one pixel wide, so shapes stay smooth from
32 to 512 px.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pixel_grid(resolution: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image coordinates ``x, y`` of the pixel centres, each ``[1, H, W]``."""
    t = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2.0 - 1.0
    return t.view(1, 1, -1).expand(1, resolution, resolution), t.view(1, -1, 1).expand(1, resolution, resolution)


def col(t: torch.Tensor) -> torch.Tensor:
    """A per-sample value ``[B]`` shaped ``[B, 1, 1]`` to broadcast over an image."""
    return t.view(-1, 1, 1)


def ramp(d: torch.Tensor, width: torch.Tensor | float) -> torch.Tensor:
    """0 for ``d <= -width/2``, 1 for ``d >= width/2``, linear between (a soft step at 0)."""
    return (d / width).add_(0.5).clamp_(0.0, 1.0)


def smoothstep(e0: torch.Tensor | float, e1: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Hermite step: 0 below ``e0``, 1 above ``e1`` (``e1 < e0`` gives the falling step)."""
    t = ((x - e0) / (e1 - e0)).clamp_(0.0, 1.0)
    return (3.0 - 2.0 * t).mul_(t).mul_(t)


def ellipse(u: torch.Tensor, v: torch.Tensor, cx, cy, rx, ry, edge: torch.Tensor | float) -> torch.Tensor:
    """Soft filled ellipse: 1 inside, 0 outside, ramp of width ``edge`` (coordinate units) at the border.

    The signed distance is approximated by ``(1 - rho) * min(rx, ry)`` with
    ``rho`` the normalised elliptic radius.
    """
    rho = torch.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 + 1e-12)
    return ramp((1.0 - rho) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry)), edge)


def line(distance: torch.Tensor, half_width: torch.Tensor | float, pixel: float) -> torch.Tensor:
    """Profile of a line of ``half_width`` at ``distance``; never thinner than ~0.6 px, so it stays visible."""
    hw = torch.clamp(torch.as_tensor(half_width, device=distance.device), min=0.6 * pixel)
    return ramp(hw - distance.abs(), pixel)


def segment(v: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor, pixel: float) -> torch.Tensor:
    """Soft indicator of ``v0 <= v <= v1``."""
    return ramp(v - v0, pixel) * ramp(v1 - v, pixel)


def sample_field(field: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, padding: str = "reflection") -> torch.Tensor:
    """Bilinear look-up of ``field [B, C, h, w]`` at grid coordinates ``gx, gy [B, H, W]`` in [-1, 1].

    Returns ``[B, C, H, W]``.
    """
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(field, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def upsample(field: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bicubic up-sampling of a coarse field ``[B, C, h, w]`` to ``resolution`` (smooth noise)."""
    return F.interpolate(field, size=(resolution, resolution), mode="bicubic", align_corners=False)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, 1, H, W]`` with a per-sample ``sigma [B]`` in pixels (replicate borders).

    One grouped convolution per axis; the kernel radius is ``ceil(3 * max_sigma)``
    (a bound fixed by the caller, so a sample's kernel does not depend on its batch).
    """
    b, _, h, w = images.shape
    radius = int(math.ceil(3.0 * max_sigma))
    if radius < 1:
        return images
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    s = sigma.clamp(min=0.05).view(-1, 1)
    kernel = torch.exp(-0.5 * (t / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    x = F.pad(images.view(1, b, h, w), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(b, 1, 1, -1), groups=b)
    x = F.conv2d(x, kernel.view(b, 1, -1, 1), groups=b)
    return x.view(b, 1, h, w)


def add_rows(total: torch.Tensor, rows: torch.Tensor, value: torch.Tensor) -> None:
    """``total[rows] += value`` in place for distinct ``rows`` (a gather, add and scatter of whole rows)."""
    total.index_copy_(0, rows, total.index_select(0, rows).add_(value))


def box_blur(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2r + 1)^2`` window (replicate borders), for softening masks; ``[B, 1, H, W]``."""
    if radius < 1:
        return images
    k = 2 * radius + 1
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    return F.avg_pool2d(F.avg_pool2d(x, (k, 1), stride=1), (1, k), stride=1)
