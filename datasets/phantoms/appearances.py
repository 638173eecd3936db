"""Radiographic appearances of findings, and how each label schema maps onto them.

A finding vector is first *resolved* to present / absent per column:
``1`` present; ``0`` and blank (nan) absent; ``-1`` (uncertain) present with
probability 0.5, decided by one of the sample's own uniforms, so an uncertain
label renders the same way every time for the same sample. Each present
column then switches on one or more *appearances* (``SCHEMA_APPEARANCES``);
where a column lists several alternatives (CheXpert "Lung Lesion": nodule or
mass) one is chosen by the sample's uniforms.

Appearances that change normal structures (enlarged cardiomediastinum,
cardiomegaly, fracture) are flags of :func:`.anatomy.build_anatomy`; support
devices are drawn by :mod:`.devices`. The others are :class:`Effect` layers,
in attenuation units relative to the sample's lung air ``t_air`` (so an
opacity of density 1 makes aerated lung as dense as soft tissue):

============== =================================================================
pneumothorax   one lung collapsed towards its hilum (the stored mask looked up
               at ``hilum + (p - hilum) / k``, ``k ~ U(0.6, 0.8)``); in the rim
               between chest wall and lung: extra air ``U(0.3, 0.5)``, no
               vessel markings; a thin visceral pleural line at the lung edge
effusion       basal fluid under a meniscus ``by > y1 - h - m lat^2`` (box
               units, ``h ~ U(0.25, 0.6)``, ``m ~ U(0.25, 0.5)``, ``lat`` 0 at the
               midline and 1 at the lateral wall: rising laterally), hazy upper
               edge, density ``U(0.8, 1.0)``, filling the costophrenic angle;
               left 40 %, right 40 %, both 20 %
pneumonia      patchy opacity: a blob of radius ``U(0.16, 0.28)`` in one lung
               times a thresholded smooth noise, density ``U(0.7, 0.95)``;
               sometimes a second focus
consolidation  lobar opacity: the part of one lung below (lower lobe) or above
               (upper lobe) a fissure-like line, density ``U(0.75, 0.95)``,
               with air bronchograms
opacity        diffuse ill-defined opacity, large blob, density ``U(0.4, 0.65)``,
               sometimes bilateral
edema          bilateral perihilar haze (batwing): Gaussians about both hila,
               density ``U(0.45, 0.7)``, vessel markings blurred out
nodule / mass  round lobulated lesion, radius ``U(0.025, 0.045)`` /
               ``U(0.07, 0.12)`` body units, dome profile
atelectasis    a plate-like linear band in a lower zone plus faint basal haze
pleural        pleural thickening: a rim along the lateral chest wall
hyperlucent    emphysema: extra air ``U(0.15, 0.3)``, markings at 40 %
reticular      fibrosis: fine net of ridges, peripheral and basal
retrocardiac   hiatus hernia: round opacity behind the heart with an air-fluid
               level
============== =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..findings import CHEXPERT, NIH, FindingSchema
from .anatomy import Anatomy, lateral_distance, upsampled
from .canvas import Canvas
from .geometry import add_rows, col, line, ramp, sample_field, smoothstep, upsample
from .streams import Draws

APPEARANCES: tuple[str, ...] = (
    "mediastinum",
    "cardiomegaly",
    "fracture",
    "devices",
    "pneumothorax",
    "effusion",
    "pneumonia",
    "consolidation",
    "opacity",
    "edema",
    "nodule",
    "mass",
    "atelectasis",
    "pleural",
    "hyperlucent",
    "reticular",
    "retrocardiac",
)

SCHEMA_APPEARANCES: dict[str, dict[str, tuple[str, ...]]] = {
    CHEXPERT.name: {
        "Enlarged Cardiomediastinum": ("mediastinum",),
        "Cardiomegaly": ("cardiomegaly",),
        "Lung Opacity": ("opacity",),
        "Lung Lesion": ("nodule", "mass"),
        "Edema": ("edema",),
        "Consolidation": ("consolidation",),
        "Pneumonia": ("pneumonia",),
        "Atelectasis": ("atelectasis",),
        "Pneumothorax": ("pneumothorax",),
        "Pleural Effusion": ("effusion",),
        "Pleural Other": ("pleural",),
        "Fracture": ("fracture",),
        "Support Devices": ("devices",),
    },
    NIH.name: {
        "Atelectasis": ("atelectasis",),
        "Cardiomegaly": ("cardiomegaly",),
        "Effusion": ("effusion",),
        "Infiltration": ("opacity",),
        "Mass": ("mass",),
        "Nodule": ("nodule",),
        "Pneumonia": ("pneumonia",),
        "Pneumothorax": ("pneumothorax",),
        "Consolidation": ("consolidation",),
        "Edema": ("edema",),
        "Emphysema": ("hyperlucent",),
        "Fibrosis": ("reticular",),
        "Pleural_Thickening": ("pleural",),
        "Hernia": ("retrocardiac",),
    },
}


def resolve_findings(vectors: torch.Tensor, coins: torch.Tensor) -> torch.Tensor:
    """Present findings ``[B, K]`` bool: ``v == 1``, or ``v == -1`` and the sample's coin ``< 0.5``."""
    return (vectors == 1) | ((vectors == -1) & (coins < 0.5))


def appearance_matrix(present: torch.Tensor, schema: FindingSchema, choice: torch.Tensor) -> torch.Tensor:
    """Active appearances ``[B, len(APPEARANCES)]`` bool from present findings ``[B, K]``.

    ``choice [B, K]`` uniforms pick among a column's alternative appearances.
    """
    mapping = SCHEMA_APPEARANCES[schema.name]
    active = torch.zeros(present.shape[0], len(APPEARANCES), dtype=torch.bool, device=present.device)
    for k, column in enumerate(schema.columns):
        options = mapping.get(column, ())
        if not options:
            continue
        pick = (choice[:, k] * len(options)).long().clamp(max=len(options) - 1)
        for j, name in enumerate(options):
            active[:, APPEARANCES.index(name)] |= present[:, k] & (pick == j)
    return active


@dataclass
class Effect:
    """What one appearance adds: attenuation on the smooth grid, at full resolution, and a vessel gain."""

    smooth: torch.Tensor | None = None
    sharp: torch.Tensor | None = None
    vessel_gain: torch.Tensor | None = None


def on_side(c: Canvas, side: torch.Tensor) -> torch.Tensor:
    """1 on the half of the canvas of the lung on ``side`` ([b] of 0/1), else 0."""
    return torch.where(col(side) > 0, c.side1, 1.0 - c.side1)


def side_meta(c: Canvas, side: torch.Tensor, name: str) -> torch.Tensor:
    """Landmark ``s{side}_{name}`` of each sample's chosen side, ``[b]``."""
    return torch.where(side > 0, c.m(f"s1_{name}"), c.m(f"s0_{name}"))


def point_in_lung(
    c: Canvas, side: torch.Tensor, u: torch.Tensor, y_lo: float, y_hi: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A point of the stored lung mask on ``side`` in box coordinates, ``([b], [b])``.

    ``u [b, 2n]`` uniforms give n candidates in the lateral 70 % of the side's
    bounding box (vertically within fractions ``[y_lo, y_hi]`` of its
    height), clear of the heart shadow; the first candidate inside the mask
    wins, else a point 0.35 box units lateral to the hilum.
    """
    n = u.shape[1] // 2
    x0, x1 = side_meta(c, side, "x0"), side_meta(c, side, "x1")
    lateral = torch.where(side > 0, x1, x0)
    medial = torch.where(side > 0, x0, x1)
    y0, y1 = side_meta(c, side, "y0"), side_meta(c, side, "y1")
    cx = lateral.view(-1, 1) + (medial - lateral).view(-1, 1) * (0.08 + 0.62 * u[:, :n])
    cy = y0.view(-1, 1) + (y1 - y0).view(-1, 1) * (y_lo + (y_hi - y_lo) * u[:, n:])
    inside = c.lung_at(cx[:, :, None], cy[:, :, None])[:, :, 0] >= 0.5
    first = torch.argmax(inside.int(), dim=1)
    found = inside.any(dim=1)
    hx, hy = side_meta(c, side, "hx"), side_meta(c, side, "hy")
    fx = torch.where(found, cx.gather(1, first[:, None])[:, 0], hx + (2 * side - 1) * 0.35)
    fy = torch.where(found, cy.gather(1, first[:, None])[:, 0], hy + 0.2)
    return fx, fy


def blob(
    c: Canvas, cu: torch.Tensor, cv: torch.Tensor, radius: torch.Tensor, wobble: torch.Tensor | None = None
) -> torch.Tensor:
    """Gaussian blob ``exp(-(r / R)^2)`` about body point ``(cu, cv)`` ([b] each), optionally with a noisy radius."""
    r2 = (c.u - col(cu)) ** 2 + (c.v - col(cv)) ** 2
    rad = col(radius) if wobble is None else col(radius) * (1.0 + 0.25 * wobble)
    return torch.exp(-r2 / rad**2)


def coarse_noise(c: Canvas, channel: int) -> torch.Tensor:
    """A smooth noise field of the sample on the canvas' grid, ``[b, H, W]``."""
    return upsample(c.coarse[:, channel : channel + 1], c.resolution)[:, 0]


def _side(p: torch.Tensor) -> torch.Tensor:
    return (p >= 0.5).float()


def pneumothorax(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    side = _side(p[:, 0])
    k = 0.6 + 0.2 * p[:, 1]
    rim_air = 0.3 + 0.2 * p[:, 2]
    hx, hy = side_meta(c, side, "hx"), side_meta(c, side, "hy")
    qx = col(hx) + (c.bx - col(hx)) / col(k)
    qy = col(hy) + (c.by - col(hy)) / col(k)
    split = col(c.m("split_x"))
    on_side = torch.where(col(side) > 0, (qx >= split).float(), (qx < split).float())
    collapsed = c.lung_at(qx, qy) * on_side
    hemithorax = c.lung * torch.where(col(side) > 0, c.side1, 1.0 - c.side1)
    inside = collapsed.clamp(0.0, 1.0)
    rim = hemithorax * (1.0 - inside)
    pleural_line = 4.0 * inside * (1.0 - inside) * hemithorax
    t_air = col(an.t_air)
    sharp = t_air * (0.3 * pleural_line + 0.08 * inside * hemithorax - col(rim_air) * rim)
    return Effect(sharp=sharp, vessel_gain=1.0 - rim)


def effusion(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    lo = an.lo
    mode = p[:, 0]
    height = 0.25 + 0.35 * p[:, 1]
    meniscus = 0.25 + 0.25 * p[:, 2]
    density = 0.8 + 0.2 * p[:, 3]
    lat = lateral_distance(lo).clamp(0.0, 1.0)
    bottom = torch.where(lo.side1 > 0, col(lo.m("s1_y1")), col(lo.m("s0_y1")))
    level = bottom - col(height) - col(meniscus) * lat * lat
    fluid = smoothstep(level - 0.14, level + 0.04, lo.by)
    left = (mode < 0.4) | (mode >= 0.8)
    right = mode >= 0.4
    sides = torch.where(lo.side1 > 0, col(right.float()), col(left.float()))
    return Effect(smooth=col(density * an.t_air) * fluid * sides * an.aerated)


def pneumonia(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    lo = an.lo
    side = _side(p[:, 0])
    bx, by = point_in_lung(lo, side, p[:, 1:17], 0.35, 0.95)
    radius = (0.16 + 0.12 * p[:, 17]) * lo.lhw / 0.7
    density = 0.7 + 0.25 * p[:, 18]
    noise = coarse_noise(lo, 2)
    region = blob(lo, lo.to_u(bx), lo.to_v(by), radius, noise)
    second = p[:, 19] < 0.4
    bx2, by2 = point_in_lung(lo, 1.0 - side, p[:, 20:36], 0.4, 0.95)
    region = torch.maximum(region, col(second.float()) * blob(lo, lo.to_u(bx2), lo.to_v(by2), 0.7 * radius, noise))
    patches = smoothstep(-0.4, 0.7, coarse_noise(lo, 3))
    return Effect(smooth=col(density * an.t_air) * region * (0.45 + 0.55 * patches) * an.aerated)


def consolidation(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    lo = an.lo
    side = _side(p[:, 0])
    upper = p[:, 1] < 0.3
    fissure = -0.25 + 0.35 * p[:, 2]
    density = 0.75 + 0.2 * p[:, 3]
    lat = lateral_distance(lo).clamp(0.0, 1.0)
    line_by = col(fissure) + 0.3 * lat
    below = ramp(lo.by - line_by, 0.04)
    region = torch.where(col(upper), 1.0 - below, below) * on_side(lo, side) * an.aerated
    texture = 0.9 + 0.1 * coarse_noise(lo, 3)
    smooth = col(density * an.t_air) * region * texture
    # air bronchograms: dark branching ridges inside the opacity (full resolution)
    hx, hy = side_meta(c, side, "hx"), side_meta(c, side, "hy")
    dl = (c.bx - col(hx)) * (2 * col(side) - 1)
    dv = c.by - col(hy)
    r = torch.sqrt(dl * dl + dv * dv + 1e-8)
    n = sample_field(c.fine[:, 2:3], r - 1.0, torch.atan2(dv, dl) / math.pi)[:, 0]
    bronchi = torch.exp(-((n / 0.18) ** 2)) * smoothstep(1.2, 0.3, r)
    sharp = -0.2 * col(density * an.t_air) * bronchi * upsampled(region, c.resolution)
    return Effect(smooth=smooth, sharp=sharp)


def opacity(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    lo = an.lo
    side = _side(p[:, 0])
    bx, by = point_in_lung(lo, side, p[:, 1:17], 0.2, 0.9)
    radius = (0.25 + 0.15 * p[:, 17]) * lo.lhw / 0.7
    density = 0.4 + 0.25 * p[:, 18]
    both = p[:, 19] < 0.4
    noise = coarse_noise(lo, 2)
    region = blob(lo, lo.to_u(bx), lo.to_v(by), radius, noise)
    mirror_u = 2 * lo.mid - lo.to_u(bx)
    region = torch.maximum(region, col(both.float()) * blob(lo, mirror_u, lo.to_v(by), radius, noise))
    return Effect(smooth=col(density * an.t_air) * region * (0.8 + 0.2 * coarse_noise(lo, 3)) * an.aerated)


def edema(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    lo = an.lo
    density = 0.45 + 0.25 * p[:, 0]
    sx = (0.28 + 0.1 * p[:, 1]) * lo.lhw / 0.7
    sy = (0.22 + 0.1 * p[:, 2]) * lo.lhh / 0.6
    haze = torch.zeros_like(lo.u)
    for s in (0, 1):
        cu = an.hilum_u[:, s] + (2 * s - 1) * 0.06
        cv = an.hilum_v[:, s] + 0.05
        haze = torch.maximum(haze, torch.exp(-(((lo.u - col(cu)) / col(sx)) ** 2) - ((lo.v - col(cv)) / col(sy)) ** 2))
    texture = 0.8 + 0.2 * coarse_noise(lo, 3)
    smooth = col(density * an.t_air) * haze * texture * an.aerated
    return Effect(smooth=smooth, vessel_gain=1.0 - 0.5 * upsampled(haze, c.resolution))


def _lesion(c: Canvas, an: Anatomy, p: torch.Tensor, r_lo: float, r_hi: float) -> Effect:
    side = _side(p[:, 0])
    bx, by = point_in_lung(c, side, p[:, 1:17], 0.1, 0.85)
    radius = (r_lo + (r_hi - r_lo) * p[:, 17]) * c.lhw / 0.7
    density = 0.7 + 0.3 * p[:, 18]
    phase = p[:, 19] * 2 * math.pi
    du, dv = c.u - col(c.to_u(bx)), c.v - col(c.to_v(by))
    theta = torch.atan2(dv, du)
    rad = col(radius) * (1.0 + 0.12 * torch.cos(3 * theta + col(phase)))
    rho = torch.sqrt(du * du + dv * dv) / rad
    dome = torch.sqrt((1.0 - rho * rho).clamp(min=0.0)) * 0.6 + 0.4
    disc = ramp((1.0 - rho) * rad, c.pixel * 1.5)
    return Effect(sharp=col(density * an.t_air) * disc * dome * (0.3 + 0.7 * an.aerated_hi))


def nodule(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    return _lesion(c, an, p, 0.025, 0.045)


def mass(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    return _lesion(c, an, p, 0.07, 0.12)


def atelectasis(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    side = _side(p[:, 0])
    bx, by = point_in_lung(c, side, p[:, 1:17], 0.55, 0.85)
    angle = (p[:, 17] - 0.5) * 0.7
    half_width = (0.012 + 0.01 * p[:, 18]) * c.lhw / 0.7
    density = 0.45 + 0.25 * p[:, 19]
    cu, cv = c.to_u(bx), c.to_v(by)
    du, dv = c.u - col(cu), c.v - col(cv)
    ca, sa = col(torch.cos(angle)), col(torch.sin(angle))
    across = -sa * du + ca * dv
    along = ca * du + sa * dv
    band = line(across, col(half_width), c.pixel) * ramp(0.22 * col(c.lhw) / 0.7 - along.abs(), 0.05)
    lo = an.lo
    haze = 0.25 * blob(lo, cu, cv, 0.15 * lo.lhw / 0.7) * on_side(lo, side) * an.aerated
    return Effect(
        smooth=col(density * an.t_air) * haze, sharp=col(density * an.t_air) * band * on_side(c, side) * an.aerated_hi
    )


def pleural(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    lo = an.lo
    side = _side(p[:, 0])
    both = p[:, 1] < 0.3
    k = 1.06 + 0.06 * p[:, 2]
    density = 0.6 + 0.3 * p[:, 3]
    lat = lateral_distance(lo)
    rims = torch.zeros_like(lo.u)
    for s in (0, 1):
        sv = torch.full_like(side, float(s))
        cx = (side_meta(lo, sv, "x0") + side_meta(lo, sv, "x1")) / 2
        cy = (side_meta(lo, sv, "y0") + side_meta(lo, sv, "y1")) / 2
        inner = lo.lung_at(col(cx) + (lo.bx - col(cx)) * col(k), col(cy) + (lo.by - col(cy)) * col(k))
        use = ((side == s) | both).float()
        rims = rims + col(use) * on_side(lo, sv) * lo.lung_soft * (1.0 - inner)
    where = smoothstep(0.35, 0.7, lat) * smoothstep(0.95, 0.7, lo.by)
    return Effect(smooth=col(density * an.t_air) * rims.clamp(max=1.0) * where)


def hyperlucent(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    extra = 0.15 + 0.15 * p[:, 0]
    return Effect(smooth=-col(extra * an.t_air) * an.aerated, vessel_gain=torch.full_like(c.u, 0.4))


def reticular(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    density = 0.35 + 0.2 * p[:, 0]
    n = sample_field(c.fine[:, 2:3], 3.0 * c.u, 0.75 * c.v)[:, 0]
    net = torch.exp(-((n / 0.3) ** 2))
    lat = lateral_distance(c).clamp(0.0, 1.0)
    where = smoothstep(0.3, 0.85, lat) * smoothstep(-0.3, 0.6, c.by)
    return Effect(sharp=col(density * an.t_air) * net * where * an.aerated_hi)


def retrocardiac(c: Canvas, an: Anatomy, p: torch.Tensor) -> Effect:
    lo = an.lo
    radius = (0.08 + 0.05 * p[:, 0]) * lo.lhw / 0.7
    cu = an.heart_cx - (0.1 + 0.2 * p[:, 1]) * an.heart_hw
    cv = an.heart_cy + 0.35 * an.heart_hh
    du, dv = lo.u - col(cu), lo.v - col(cv)
    rho = torch.sqrt(du * du + dv * dv) / col(radius)
    sac = ramp(1.0 - rho, 0.15)
    bubble = ramp(0.75 - rho, 0.15) * ramp(-dv, 0.01)
    return Effect(smooth=col(an.t_air) * (0.35 * sac - 0.8 * bubble))


@dataclass(frozen=True)
class Layer:
    """An appearance drawn as an :class:`Effect` from ``n_params`` uniforms."""

    name: str
    n_params: int
    draw: Callable[[Canvas, Anatomy, torch.Tensor], Effect]


LAYERS: tuple[Layer, ...] = (
    Layer("pneumothorax", 3, pneumothorax),
    Layer("effusion", 4, effusion),
    Layer("pneumonia", 36, pneumonia),
    Layer("consolidation", 4, consolidation),
    Layer("opacity", 20, opacity),
    Layer("edema", 3, edema),
    Layer("nodule", 20, nodule),
    Layer("mass", 20, mass),
    Layer("atelectasis", 20, atelectasis),
    Layer("pleural", 4, pleural),
    Layer("hyperlucent", 1, hyperlucent),
    Layer("reticular", 1, reticular),
    Layer("retrocardiac", 2, retrocardiac),
)


def draw_effects(
    c: Canvas, an: Anatomy, active: torch.Tensor, draws: Draws
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply every layer to the samples where it is active.

    Returns ``(smooth [B, h, w], sharp [B, H, W], vessel_gain [B, H, W])``;
    each layer takes its uniforms for the whole batch first, so a sample's
    draws do not depend on which layers are active.
    """
    smooth = torch.zeros_like(an.smooth)
    sharp = torch.zeros_like(c.u)
    gain = torch.ones_like(c.u)
    for layer in LAYERS:
        params = draws.take(layer.n_params)
        rows = torch.nonzero(active[:, APPEARANCES.index(layer.name)]).flatten()
        if rows.numel() == 0:
            continue
        effect = layer.draw(c.select(rows), an.select(rows), params[rows])
        if effect.smooth is not None:
            add_rows(smooth, rows, effect.smooth)
        if effect.sharp is not None:
            add_rows(sharp, rows, effect.sharp)
        if effect.vessel_gain is not None:
            gain.index_copy_(0, rows, gain.index_select(0, rows).mul_(effect.vessel_gain))
    return smooth, sharp, gain
