"""Adaptive discriminator augmentation (ADA) for grayscale images.

:class:`AugmentPipe` applies, to every image independently and each with
probability ``p * weight``, the grayscale-relevant operations of the reference
'bgc' pipeline, in this order:

geometric (composed into one affine matrix per image, one bilinear resampling
with reflection padding):
    xflip (mirror), rotate90 (k * 90 degrees, k uniform in 0..3), xint (integer
    translation, uniform within +-``xint_max`` of the size, rounded to pixels),
    scale (isotropic, ``2^N(0, scale_std)``), rotate (uniform angle within
    +-``rotate_max * pi``; drawn twice, before and after aniso, each with
    probability ``1 - sqrt(1 - p)`` so that some rotation happens with
    probability ``p``), aniso (``x * s, y / s``, ``s = 2^N(0, aniso_std)``), xfrac
    (translation ``N(0, xfrac_std)`` of the size);
intensity (an affine map ``a x + b`` per image; images are expected in [-1, 1]):
    brightness (``x + N(0, brightness_std)``), contrast (``x * 2^N(0, contrast_std)``,
    about 0 = mid-grey), lumaflip (``-x``, i.e. an inverted radiograph; off by default).

The matrices are inverse maps (output pixel -> input position) in pixel units
about the image centre, so flips, 90-degree rotations and integer translations
land on pixel centres and are exact. Images whose geometric (intensity)
transform was not drawn pass through that step untouched (bit-exact), so
``p = 0`` is the identity.

Differentiability: the resampling is :class:`GridResample`, an autograd
function around ``grid_sample`` whose backward is itself differentiable with
respect to the incoming gradient. R1 (a gradient penalty on the un-augmented
real images) therefore back-propagates through the augmentation on every
PyTorch version, including those where ``grid_sample``'s own double backward
is not implemented. Second-order terms through the sampling grid are dropped
(the grid comes from random augmentation parameters and never needs them).

:class:`AdaController` adjusts ``p`` from the sign of the discriminator's
outputs on real images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plumbing.config import dataclass_from_dict
from plumbing.distributed import sum_over_ranks
from plumbing.errors import UserError

from .layers import autocast_off

_BILINEAR, _REFLECTION = 0, 2  # aten enum values of grid_sample's interpolation and padding modes


def _grid_sample(image: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _grid_sample_backward(grad_out: Tensor, image: Tensor, grid: Tensor, mask: tuple[bool, bool]) -> tuple[Any, Any]:
    return torch.ops.aten.grid_sampler_2d_backward(
        grad_out, image, grid, _BILINEAR, _REFLECTION, False, list(mask)
    )


class GridResample(torch.autograd.Function):
    """``y = grid_sample(x, grid)`` (bilinear, reflection padding, ``align_corners=False``).

    ``y`` is linear in ``x``: ``y = S(grid) x``. The backward returns
    ``dL/dx = S^T g`` through :class:`_GridResampleTranspose`, whose own backward
    is ``S`` again, so ``dL/dx`` stays differentiable with respect to ``g`` to
    any order. ``dL/dgrid`` is returned to first order only (detached).
    """

    @staticmethod
    def forward(ctx: Any, image: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(image, grid)
        return _grid_sample(image, grid)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
        image, grid = ctx.saved_tensors
        grad_image = grad_grid = None
        if ctx.needs_input_grad[0]:
            grad_image = _GridResampleTranspose.apply(grad_out, image, grid)
        if ctx.needs_input_grad[1]:
            with torch.no_grad():
                grad_grid = _grid_sample_backward(grad_out, image, grid, (False, True))[1]
        return grad_image, grad_grid


class _GridResampleTranspose(torch.autograd.Function):
    """``S(grid)^T g``: the gradient of :class:`GridResample` with respect to its image.

    Its derivative with respect to ``g`` is ``S(grid)`` (the forward sampling);
    it does not depend on the image's values (only its shape), and the
    derivative with respect to the grid is dropped.
    """

    @staticmethod
    def forward(ctx: Any, grad_out: Tensor, image: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(grid)
        return _grid_sample_backward(grad_out, image, grid, (True, False))[0]

    @staticmethod
    def backward(ctx: Any, grad2: Tensor) -> tuple[Tensor | None, None, None]:
        (grid,) = ctx.saved_tensors
        grad_grad_out = GridResample.apply(grad2, grid) if ctx.needs_input_grad[0] else None
        return grad_grad_out, None, None


def grid_resample(image: Tensor, grid: Tensor) -> Tensor:
    """Bilinear resampling with reflection padding, differentiable twice in ``image`` (see :class:`GridResample`)."""
    return GridResample.apply(image, grid)


@dataclass
class AugmentSpec:
    """Which ADA operations run (probability multipliers of ``p``) and how strong they are.

    The defaults are the reference 'bgc' pipeline without its colour-only
    operations (hue, saturation) and with lumaflip off.
    """

    xflip: float = 1.0
    rotate90: float = 1.0
    xint: float = 1.0
    scale: float = 1.0
    rotate: float = 1.0
    aniso: float = 1.0
    xfrac: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    lumaflip: float = 0.0
    xint_max: float = 0.125
    scale_std: float = 0.2
    rotate_max: float = 1.0
    aniso_std: float = 0.2
    xfrac_std: float = 0.125
    brightness_std: float = 0.2
    contrast_std: float = 0.5

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise UserError(f"augmentation setting {f.name} must be >= 0, got {getattr(self, f.name)}")

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentSpec:
        return dataclass_from_dict(cls, data, "augmentation")

    def geometric(self) -> bool:
        return any(getattr(self, n) > 0 for n in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"))

    def intensity(self) -> bool:
        return any(getattr(self, n) > 0 for n in ("brightness", "contrast", "lumaflip"))


def _eye(batch: int, device: torch.device) -> Tensor:
    return torch.eye(3, device=device).unsqueeze(0).repeat(batch, 1, 1)


def _scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(sx.shape[0], sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(tx.shape[0], tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _rotate2d(theta: Tensor) -> Tensor:
    m = _eye(theta.shape[0], theta.device)
    cos, sin = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


class AugmentPipe(nn.Module):
    """ADA augmentation of a batch ``[B, C, H, W]`` (values about [-1, 1]) with probability buffer ``p``.

    ``forward`` returns fp32 images (it runs with autocast off); it is
    differentiable in the images (twice, for R1). It never synchronises with
    the device: the whole batch is resampled and ``torch.where`` keeps the
    images whose operations were not drawn.
    """

    def __init__(self, spec: AugmentSpec | None = None, p: float = 0.0) -> None:
        super().__init__()
        self.spec = spec if spec is not None else AugmentSpec()
        self.register_buffer("p", torch.tensor(float(p)))

    def _gate(self, batch: int, weight: float, device: torch.device, generator: torch.Generator | None,
              prob: Tensor | None = None) -> Tensor:
        """Bool ``[B]``: which images get an operation of probability ``p * weight`` (or ``prob``)."""
        chance = (self.p * weight).clamp(0, 1) if prob is None else prob
        return torch.rand(batch, device=device, generator=generator) < chance

    def geometric_matrices(self, batch: int, height: int, width: int, device: torch.device,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(G, applied)``: inverse maps ``[B, 3, 3]`` in centred pixel units and a bool ``[B]`` mask."""
        s = self.spec
        g = _eye(batch, device)
        applied = torch.zeros(batch, dtype=torch.bool, device=device)

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, device=device, generator=generator)

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, device=device, generator=generator)

        if s.xflip > 0:
            on = self._gate(batch, s.xflip, device, generator)
            flip = torch.floor(rand(batch) * 2) * on
            g = g @ _scale2d(1 - 2 * flip, torch.ones(batch, device=device))
            applied |= on
        if s.rotate90 > 0:
            on = self._gate(batch, s.rotate90, device, generator)
            k = torch.floor(rand(batch) * 4) * on
            g = g @ _rotate2d(-k * (math.pi / 2))
            applied |= on
        if s.xint > 0:
            on = self._gate(batch, s.xint, device, generator)
            t = (rand(batch, 2) * 2 - 1) * s.xint_max * on.unsqueeze(1)
            g = g @ _translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height))
            applied |= on
        if s.scale > 0:
            on = self._gate(batch, s.scale, device, generator)
            sc = torch.exp2(randn(batch) * s.scale_std * on)
            g = g @ _scale2d(1 / sc, 1 / sc)
            applied |= on
        p_rot = 1 - torch.sqrt((1 - (self.p * s.rotate).clamp(0, 1)).clamp_min(0))
        if s.rotate > 0:
            on = self._gate(batch, s.rotate, device, generator, prob=p_rot)
            theta = (rand(batch) * 2 - 1) * math.pi * s.rotate_max * on
            g = g @ _rotate2d(-theta)
            applied |= on
        if s.aniso > 0:
            on = self._gate(batch, s.aniso, device, generator)
            sc = torch.exp2(randn(batch) * s.aniso_std * on)
            g = g @ _scale2d(1 / sc, sc)
            applied |= on
        if s.rotate > 0:
            on = self._gate(batch, s.rotate, device, generator, prob=p_rot)
            theta = (rand(batch) * 2 - 1) * math.pi * s.rotate_max * on
            g = g @ _rotate2d(-theta)
            applied |= on
        if s.xfrac > 0:
            on = self._gate(batch, s.xfrac, device, generator)
            t = randn(batch, 2) * s.xfrac_std * on.unsqueeze(1)
            g = g @ _translate2d(-t[:, 0] * width, -t[:, 1] * height)
            applied |= on
        return g, applied

    def intensity_coefficients(self, batch: int, device: torch.device,
                               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, b, applied)``: each image becomes ``a x + b``; ``applied`` marks the changed ones."""
        s = self.spec
        a = torch.ones(batch, device=device)
        b = torch.zeros(batch, device=device)
        applied = torch.zeros(batch, dtype=torch.bool, device=device)
        if s.brightness > 0:
            on = self._gate(batch, s.brightness, device, generator)
            b = b + torch.randn(batch, device=device, generator=generator) * s.brightness_std * on
            applied |= on
        if s.contrast > 0:
            on = self._gate(batch, s.contrast, device, generator)
            c = torch.exp2(torch.randn(batch, device=device, generator=generator) * s.contrast_std * on)
            a, b = a * c, b * c
            applied |= on
        if s.lumaflip > 0:
            on = self._gate(batch, s.lumaflip, device, generator)
            sign = 1 - 2 * torch.floor(torch.rand(batch, device=device, generator=generator) * 2) * on
            a, b = a * sign, b * sign
            applied |= on
        return a, b, applied

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        device = images.device
        with autocast_off(device.type):
            x = images.float()
            if self.spec.geometric():
                g, applied = self.geometric_matrices(batch, height, width, device, generator)
                # normalised [-1, 1] coordinates n relate to centred pixels by c = S n, S = diag(W/2, H/2)
                to_pixels = torch.diag(torch.tensor([width / 2, height / 2, 1.0], device=device))
                to_norm = torch.diag(torch.tensor([2 / width, 2 / height, 1.0], device=device))
                theta = (to_norm @ g @ to_pixels)[:, :2, :]
                grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
                x = torch.where(applied.reshape(batch, 1, 1, 1), grid_resample(x, grid), x)
            if self.spec.intensity():
                a, b, applied = self.intensity_coefficients(batch, device, generator)
                x = torch.where(
                    applied.reshape(batch, 1, 1, 1), x * a.reshape(batch, 1, 1, 1) + b.reshape(batch, 1, 1, 1), x
                )
        return x

    def extra_repr(self) -> str:
        return f"p={float(self.p):.4f}, spec={self.spec}"


class AdaController:
    """Adjusts ``pipe.p`` toward a target sign of ``D(real)``.

    Call :meth:`observe` with the discriminator's logits on (augmented) real
    images whenever it sees them, and :meth:`step` once per minibatch. Every
    ``interval`` minibatches, with ``r_t = mean(sign(D(real)))`` over the
    observations since the last update,
    ``p <- clamp(p + sign(r_t - target) * batch_size * interval / (ada_kimg * 1000), 0, 1)``,
    so ``p`` can go from 0 to 1 in ``ada_kimg`` thousand images. Under several
    processes the observations of every rank count (summed over ranks) and
    ``batch_size`` is the global batch, so every rank moves ``p`` alike.
    """

    def __init__(self, pipe: AugmentPipe, *, batch_size: int, target: float = 0.6, interval: int = 4,
                 ada_kimg: float = 500.0) -> None:
        if batch_size < 1 or interval < 1 or ada_kimg <= 0:
            raise UserError("ADA needs batch_size >= 1, interval >= 1 and ada_kimg > 0")
        self.pipe = pipe
        self.batch_size, self.target, self.interval, self.ada_kimg = batch_size, target, interval, ada_kimg
        self._sign_sum: Tensor | float = 0.0
        self._count = 0
        self._minibatches = 0
        self.last_rt: float | None = None

    @property
    def step_size(self) -> float:
        return self.batch_size * self.interval / (self.ada_kimg * 1000)

    def observe(self, real_logits: Tensor) -> None:
        """Accumulate ``sum(sign(logits))`` (on the logits' device, without a sync)."""
        self._sign_sum = self._sign_sum + torch.sign(real_logits.detach().float()).sum()
        self._count += real_logits.numel()

    def step(self) -> bool:
        """Count a minibatch; every ``interval``-th one updates ``p``. Returns whether it did."""
        self._minibatches += 1
        if self._minibatches % self.interval:
            return False
        totals = sum_over_ranks(torch.tensor([float(self._sign_sum), float(self._count)], dtype=torch.float64))
        sign_sum, count = totals.tolist()
        if count == 0:
            return False
        rt = sign_sum / count
        direction = (rt > self.target) - (rt < self.target)
        with torch.no_grad():
            self.pipe.p.copy_((self.pipe.p + direction * self.step_size).clamp(0.0, 1.0))
        self.last_rt = rt
        self._sign_sum, self._count = 0.0, 0
        return True

    def state_dict(self) -> dict[str, Any]:
        """Accumulators and counters (plain numbers; ``p`` itself lives in the pipe's buffers)."""
        return {
            "sign_sum": float(self._sign_sum),
            "count": self._count,
            "minibatches": self._minibatches,
            "last_rt": self.last_rt,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sign_sum = float(state["sign_sum"])
        self._count = int(state["count"])
        self._minibatches = int(state["minibatches"])
        self.last_rt = None if state["last_rt"] is None else float(state["last_rt"])
