"""Normal chest anatomy as an attenuation map (higher = denser = brighter on the film).

The map is a sum of layers over the placed lung mask (:mod:`.canvas`), in
body units; typical values: air outside the body 0, aerated lung about 0.25,
soft tissue about 0.6, mediastinum and heart 0.7-0.8, bone adds 0.1-0.2.

* body: a soft-edged outline ``|u - lcx| < w(v)``, chest wall ``lhw + U(0.08,
  0.16)`` wide, shoulders wider and a neck above; thickness falls off towards
  the sides as ``0.7 + 0.3 sqrt(1 - r^2)``;
* abdomen: below a dome height in the lower lung box, denser soft tissue;
* lungs: air subtracted inside the (blurred) lung mask, except where the heart
  or mediastinum lie in front;
* heart: an ellipse tilted by ``U(0.25, 0.5)`` rad (apex down towards the
  patient's left) over the gap between the lungs' lower parts, centred 0.3
  of its half width towards the patient's left; its half width (box units)
  is ``clamp(gap, 0.2, 0.3) + 0.24`` times ``U(0.95, 1.05)`` (cardiothoracic
  ratio about 0.4), or times ``U(1.4, 1.6)`` with cardiomegaly (about 0.6);
* upper mediastinum: a band over the upper gap, ``U(0.9, 1.1)`` times the
  measured gap, or ``U(1.7, 2.2)`` when the cardiomediastinum is enlarged,
  with an aortic knob on the patient's left;
* spine (midline band with vertebral end plates) and trachea (dark band
  down to the carina);
* clavicles, posterior ribs (a periodic pattern in a warped coordinate:
  ``phase = n ((by - f(d) + 1.05) / 2.05)^0.8`` with ``d`` the normalised
  distance from the midline and ``f`` the rib curvature; bright cortical
  rims) and fainter anterior ribs; a fracture cuts one posterior rib and
  shifts its lateral fragment;
* vascular markings: ridges of an anisotropic Gaussian field sampled in polar
  coordinates about each hilum, so they radiate from the hila and taper
  towards the periphery.

Smooth layers (everything but the lung border, clavicles and vessels) are
drawn on a grid of half the resolution from 192 px up and upsampled
bilinearly; the lung air is multiplied by the full-resolution lung mask so
the lung border stays sharp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .canvas import Canvas, RowView
from .geometry import col, ellipse, line, ramp, sample_field, smoothstep, upsample
from .streams import Draws


@dataclass
class Anatomy:
    """The normal anatomy of a batch, split by grid (see :func:`smooth_resolution`).

    Attributes:
        lo: the canvas of the smooth grid.
        smooth: attenuation of the smooth layers without the lung air, ``[B, h, w]``;
            findings add their smooth opacities here.
        air: lung air on the smooth grid, ``[B, h, w]``; the image subtracts
            ``air * lung_soft`` at full resolution, so the lung border stays sharp.
        sharp: full-resolution attenuation (clavicles), ``[B, H, W]``.
        vessels: vascular markings at full resolution, ``[B, H, W]``; findings may scale them.
        body, front: body outline and the heart/mediastinum in front of the lungs (smooth grid).
        aerated, aerated_hi: the visible lung ``lung_soft * (1 - front)`` on the smooth
            grid and at full resolution; findings inside the lungs are weighted by it.
        heart_*: heart ellipse (body units, ``[B]``); hilum_u/v: ``[B, 2]`` per side.
    """

    lo: Canvas
    smooth: torch.Tensor
    air: torch.Tensor
    sharp: torch.Tensor
    vessels: torch.Tensor
    body: torch.Tensor
    front: torch.Tensor
    aerated: torch.Tensor
    aerated_hi: torch.Tensor
    heart_cx: torch.Tensor
    heart_cy: torch.Tensor
    heart_hw: torch.Tensor
    heart_hh: torch.Tensor
    t_air: torch.Tensor
    hilum_u: torch.Tensor
    hilum_v: torch.Tensor
    carina_v: torch.Tensor
    dome_v: torch.Tensor

    def select(self, index: torch.Tensor) -> Anatomy:
        """The anatomy of the samples ``index`` (a lazy :class:`~.canvas.RowView`)."""
        return RowView(self, index, self.smooth.shape[0])  # type: ignore[return-value]


def lateral_distance(c: Canvas) -> torch.Tensor:
    """``d``: 0 at the lungs' split line, 1 at each lung box's lateral edge, ``[B, H, W]``."""
    split = col(c.m("split_x"))
    return torch.where(c.side1 > 0, (c.bx - split) / (1.0 - split), (split - c.bx) / (1.0 + split))


def ribs(c: Canvas, d: torch.Tensor, draws: Draws, fracture: torch.Tensor) -> torch.Tensor:
    """Posterior and anterior rib layer in [0, 1] (before its attenuation scale); see the module docstring."""
    n = draws.range(9.0, 10.5)
    width = draws.range(0.36, 0.46)
    bend = draws.range(0.85, 1.15)
    frac_rib = (3 + draws.take(1)[:, 0] * 5).floor()
    frac_side = (draws.take(1)[:, 0] < 0.5).float()
    frac_d = draws.range(0.55, 0.9)
    frac_shift = draws.range(0.18, 0.3)
    pixel_phase = col(n / 2.05 / c.lhh) * c.pixel

    curve = col(bend) * (0.6 * d * d - 0.3 * d + 0.8 * torch.relu(d - 0.75) ** 2)
    s = ((c.by - curve + 1.05) / 2.05).clamp(min=0.0)
    phase = col(n) * s.pow(0.8)
    half = col(width) / 2
    k = torch.floor(phase - half + 0.5)
    broken = col(fracture.float()) * (k == col(frac_rib)).float() * (c.side1 == col(frac_side)).float()
    phase = phase + broken * col(frac_shift) * ramp(d - col(frac_d), 0.02)
    q = torch.remainder(phase - half + 0.5, 1.0) - 0.5  # phase distance to the nearest rib's centre line
    body = ramp(half - q.abs(), pixel_phase)
    rim = 0.55 + 0.45 * (q.abs() / half).clamp(max=1.0) ** 2
    gap = 1.0 - broken * ramp(0.04 - (d - col(frac_d)).abs(), 0.015)
    extent = ramp(d - 0.04, 0.04) * ramp(1.14 - d, 0.06) * ramp(s - 0.02, 0.02) * ramp(0.95 - s, 0.05)
    posterior = body * rim * gap * extent

    na = n * 0.8
    curve_a = 0.35 * (1.0 - d)
    sa = ((c.by - curve_a + 0.85) / 2.1).clamp(min=0.0)
    qa = torch.remainder(col(na) * sa - 0.25, 1.0) - 0.5
    anterior = ramp(0.22 - qa.abs(), pixel_phase) * ramp(d - 0.3, 0.1) * ramp(1.05 - d, 0.05) * ramp(1.0 - sa, 0.05)
    return posterior + 0.35 * anterior


def vessel_ridges(c: Canvas, hu: torch.Tensor, hv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge pattern radiating from the hila and the distance ``r`` to the own hilum, ``[B, H, W]`` each."""
    side = c.side1
    hx = torch.where(side > 0, col(hu[:, 1]), col(hu[:, 0]))
    hy = torch.where(side > 0, col(hv[:, 1]), col(hv[:, 0]))
    dl = (c.u - hx) * (2.0 * side - 1.0)
    dv = c.v - hy
    r = torch.sqrt(dl * dl + dv * dv + 1e-8)
    theta = torch.atan2(dv, dl)
    field = sample_field(c.fine[:, :2], r / 1.2 * 2.0 - 1.0, theta / math.pi)
    n = torch.where(side > 0, field[:, 1], field[:, 0])
    taper = (r.clamp(min=0.04) / 0.25) ** 1.2
    ridges = torch.exp(-((n * taper / 0.45) ** 2))
    return ridges, r


def smooth_resolution(resolution: int) -> int:
    """Grid of the smooth layers: half the output from 192 px up (they are upsampled bilinearly)."""
    return resolution // 2 if resolution >= 192 else resolution


def upsampled(field: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of ``[B, h, w]`` or ``[B, C, h, w]`` to ``resolution`` (identity when equal)."""
    if field.shape[-1] == resolution:
        return field
    x = field if field.dim() == 4 else field[:, None]
    out = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return out if field.dim() == 4 else out[:, 0]


def build_anatomy(
    c: Canvas,
    draws: Draws,
    cardiomegaly: torch.Tensor,
    mediastinum: torch.Tensor,
    fracture: torch.Tensor,
) -> Anatomy:
    """The normal anatomy of a batch; the three ``[B]`` flags enlarge the heart or mediastinum or break a rib."""
    lo = c.at(smooth_resolution(c.resolution))
    u, v = lo.u, lo.v
    apex = c.lcy - c.lhh
    mid = c.mid

    # body outline
    wall = draws.range(0.08, 0.16)
    t_body = draws.range(0.54, 0.64)
    neck = draws.range(0.15, 0.21)
    shoulder = draws.range(0.10, 0.24)
    y_sh = apex + draws.range(-0.04, 0.06)
    wb = c.lhw + wall
    w_top = col(wb + shoulder) - col(shoulder) * smoothstep(col(y_sh), col(y_sh) + 0.6, v)
    w = col(neck) + (w_top - col(neck)) * smoothstep(col(y_sh) - 0.3, col(y_sh), v)
    du = (u - col(c.lcx)).abs_()
    body = ramp(w - du, 0.03)
    smooth = (du / w).square_().neg_().add_(1.0).clamp_(min=0.0).sqrt_().mul_(0.3).add_(0.7)
    smooth *= upsample(c.coarse[:, :1], lo.resolution)[:, 0].mul_(0.03).add_(1.0)
    smooth *= col(t_body)

    # abdomen below the diaphragm domes
    dome = c.to_v(draws.range(0.45, 0.62))
    t_abd = draws.range(0.08, 0.14)
    smooth += smoothstep(col(dome) - 0.02, col(dome) + 0.14, v).mul_(col(t_abd))

    # heart: a tilted ellipse
    big = cardiomegaly.float()
    hw_box = (c.m("heart_hw").clamp(0.2, 0.3) + 0.24) * (
        big * draws.range(1.4, 1.6) + (1 - big) * draws.range(0.95, 1.05)
    )
    hh_box = draws.range(0.42, 0.5) * (1.0 + 0.08 * big)
    cx_box = c.m("heart_cx") + 0.3 * hw_box + draws.range(-0.03, 0.03)
    cy_box = 1.0 - 0.95 * hh_box
    tilt = draws.range(0.25, 0.5)
    heart_cx, heart_cy = c.to_u(cx_box), c.to_v(cy_box)
    heart_hw, heart_hh = hw_box * c.lhw, hh_box * c.lhh
    cu, cv = u - col(heart_cx), v - col(heart_cy)
    ct, st = col(torch.cos(tilt)), col(torch.sin(tilt))
    heart = ellipse(ct * cu + st * cv, ct * cv - st * cu, 0.0, 0.0, col(heart_hw), col(heart_hh), 0.04)
    t_heart = draws.range(0.03, 0.07)

    # upper mediastinum and aortic knob
    wide = mediastinum.float()
    med_hw_box = c.m("med_hw").clamp(0.1, 0.2) * (wide * draws.range(1.7, 2.2) + (1 - wide) * draws.range(0.9, 1.1))
    med_cx = c.to_u(c.m("med_cx"))
    med_hw = med_hw_box * c.lhw
    taper = smoothstep(col(apex), col(apex) + 0.5, v).mul_(0.25).add_(0.75)
    med = ramp(col(med_hw) * taper - (u - col(med_cx)).abs_(), 0.04) * ramp(col(heart_cy) - v, 0.05)
    knob_r = draws.range(0.08, 0.11) * c.lhw
    knob_v = c.to_v(torch.full_like(med_hw, -0.45))
    knob = ellipse(u, v, col(med_cx + med_hw), col(knob_v), col(knob_r), col(knob_r), 0.05)
    front = torch.maximum(torch.maximum(med, knob), heart)
    smooth += heart.mul(col(t_heart)).add_(med, alpha=0.04)

    # spine and trachea
    spine_hw = 0.07 * c.lhw / 0.7
    t_spine = draws.range(0.03, 0.06)
    period = draws.range(0.085, 0.1)
    endplate = torch.cos(v * col(math.pi / period)).pow_(8).mul_(0.2).add_(0.8)
    smooth += ramp(col(spine_hw) - (u - col(mid)).abs_(), 0.03).mul_(endplate).mul_(col(t_spine))
    carina_v = c.to_v(draws.range(-0.38, -0.26))
    t_tr = draws.range(0.07, 0.12)
    trachea = ramp(0.032 - (u - col(mid) - 0.01).abs_(), 0.02) * smoothstep(
        col(carina_v) + 0.03, col(carina_v) - 0.06, v
    )
    smooth -= trachea.mul_(col(t_tr))

    # ribs
    t_rib = draws.range(0.06, 0.09)
    smooth += ribs(lo, lateral_distance(lo), draws, fracture).mul_(col(t_rib))
    smooth *= body

    # lung air: less in front of the heart and mediastinum, at the apices and the bases
    t_air = draws.range(0.30, 0.37)
    lung_v = (v - col(c.lcy)) / col(c.lhh)
    air = smoothstep(-1.0, -0.3, lung_v).mul_(0.2).add_(0.8)
    air *= smoothstep(0.2, 1.0, lung_v).mul_(-0.15).add_(1.0)
    air *= upsample(c.coarse[:, 1:2], lo.resolution)[:, 0].mul_(0.06).add_(1.0)
    air *= (1.0 - front) * col(t_air)

    # clavicles (upper half of the image only), full resolution
    clav_v = apex + draws.range(0.06, 0.14)
    clav_len = draws.range(0.75, 0.95) * c.lhw
    t_clav = draws.range(0.12, 0.18)
    top = c.resolution // 2
    uu, vv = c.u[:, :top], c.v[:, :top]
    tpos = ((uu - col(mid)).abs() - 0.03) / col(clav_len)
    dist = (vv - (col(clav_v) - 0.24 * tpos + 0.1 * tpos * tpos)).abs_()
    clavicle = line(dist, 0.03, c.pixel) * ramp(tpos, 0.05) * ramp(1.0 - tpos, 0.1)
    clavicle *= (dist / 0.03).clamp_(max=1.0).mul_(0.4).add_(0.6).mul_(col(t_clav))
    sharp = torch.zeros_like(c.u)
    sharp[:, :top] = clavicle * upsampled(body, c.resolution)[:, :top]

    # vessels (scaled by findings before being added)
    hu = torch.stack([c.to_u(c.m("s0_hx")), c.to_u(c.m("s1_hx"))], dim=1)
    hv = torch.stack([c.to_v(c.m("s0_hy")), c.to_v(c.m("s1_hy"))], dim=1)
    ridges, r = vessel_ridges(c, hu, hv)
    t_ves = draws.range(0.07, 0.11)
    ridges *= torch.exp(r / (-0.5 * col(c.lhw)))
    ridges += torch.exp(-((r / 0.1) ** 2)).mul_(0.5)
    ridges *= c.lung_soft
    front_hi = upsampled(front, c.resolution)
    ridges *= front_hi.mul(-0.7).add_(1.0).mul_(col(t_ves))

    return Anatomy(
        lo=lo,
        smooth=smooth,
        air=air,
        sharp=sharp,
        vessels=ridges,
        body=body,
        front=front,
        aerated=lo.lung_soft * (1.0 - front),
        aerated_hi=c.lung_soft * (1.0 - front_hi),
        heart_cx=heart_cx,
        heart_cy=heart_cy,
        heart_hw=heart_hw,
        heart_hh=heart_hh,
        t_air=t_air,
        hilum_u=hu,
        hilum_v=hv,
        carina_v=carina_v,
        dome_v=dome,
    )
