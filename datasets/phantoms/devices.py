"""Support devices: bright thin radio-opaque structures drawn as polylines and rings.

With devices present, each kind appears with its own probability (endotracheal
tube 0.55, central venous line 0.6, ECG electrodes 0.45, nasogastric tube
0.35, pacemaker 0.2) and one kind drawn uniformly is always present. In body
units:

* endotracheal tube: down the trachea to ``U(0.04, 0.12)`` above the carina;
  a radio-opaque stripe (attenuation 0.4) inside a faint tube (0.06);
* central line: from below a clavicle (either side), medially to the
  superior vena cava on the patient's right, then down to near the carina
  level (0.4);
* nasogastric tube: down the oesophagus, through the diaphragm, curving into
  the stomach on the patient's left (0.3);
* ECG electrodes: up to four rings with a central snap (0.35 / 0.6);
* pacemaker: a rounded generator box below the left clavicle (1.0) and a
  lead to the heart (0.5).

Distances to polylines are exact point-to-segment distances.
"""

from __future__ import annotations

import torch

from .anatomy import Anatomy
from .canvas import Canvas
from .geometry import add_rows, col, line, ramp
from .streams import Draws

KIND_PROBABILITY = (0.55, 0.6, 0.45, 0.35, 0.2)  # ET tube, central line, ECG, NG tube, pacemaker
N_PARAMS = 32


def polyline_distance(
    u: torch.Tensor, v: torch.Tensor, points: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Distance ``[b, H, W]`` from each pixel to the polyline through ``points`` (each a pair of ``[b]``).

    Per segment ``a -> b``: ``t = clamp(<p - a, e> / |e|^2, 0, 1)``, ``d = |p - a - t e|``.
    """
    best = None
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:], strict=True):
        ex, ey = col(bx - ax), col(by - ay)
        px, py = u - col(ax), v - col(ay)
        t = (px * ex).addcmul_(py, ey).mul_(1.0 / (ex * ex + ey * ey + 1e-12)).clamp_(0.0, 1.0)
        px.addcmul_(t, ex, value=-1.0)
        py.addcmul_(t, ey, value=-1.0)
        d2 = px.square_().add_(py.square_())
        best = d2 if best is None else torch.minimum(best, d2, out=best)
    assert best is not None
    return best.sqrt_()


def endotracheal_tube(c: Canvas, an: Anatomy, p: torch.Tensor) -> torch.Tensor:
    tip = an.carina_v - (0.04 + 0.08 * p[:, 6])
    drift = (p[:, 7] - 0.5) * 0.06
    d = polyline_distance(c.u, c.v, [(c.mid + 0.01 + drift, torch.full_like(tip, -2.0)), (c.mid + 0.01, tip)])
    return 0.4 * line(d, 0.004, c.pixel) + 0.06 * ramp(0.02 - d, c.pixel)


def central_line(c: Canvas, an: Anatomy, p: torch.Tensor) -> torch.Tensor:
    mid, clav = c.mid, c.lcy - c.lhh + 0.1
    side = torch.where(p[:, 8] < 0.5, -1.0, 1.0)
    entry_u = mid + side * (0.35 + 0.15 * p[:, 9])
    entry_v = clav + 0.03 + 0.04 * p[:, 10]
    svc_u = mid - 0.07
    tip = an.carina_v + 0.05 + 0.15 * p[:, 11]
    path = [(entry_u, entry_v), ((entry_u + svc_u) / 2, entry_v + 0.03), (svc_u, clav + 0.12), (svc_u - 0.01, tip)]
    return 0.4 * line(polyline_distance(c.u, c.v, path), 0.003, c.pixel)


def ecg_electrodes(c: Canvas, an: Anatomy, p: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(c.u)
    for e in range(4):
        eu = c.lcx + (p[:, 12 + e] - 0.5) * 1.6 * c.lhw
        ev = c.lcy + (p[:, 16 + e] - 0.6) * 1.6 * c.lhh
        here = (p[:, 20 + e] < 0.75 - 0.15 * e).float()
        r = torch.sqrt((c.u - col(eu)) ** 2 + (c.v - col(ev)) ** 2)
        out += col(here) * (0.35 * line(r - 0.022, 0.004, c.pixel) + 0.6 * ramp(0.007 - r, c.pixel))
    return out


def nasogastric_tube(c: Canvas, an: Anatomy, p: torch.Tensor) -> torch.Tensor:
    mid, dome = c.mid, an.dome_v
    path = [
        (mid + 0.03, torch.full_like(mid, -2.0)),
        (mid + 0.035, dome - 0.1),
        (mid + 0.1 + 0.05 * p[:, 24], dome + 0.1),
        (mid + 0.2 + 0.1 * p[:, 25], dome + 0.18 + 0.1 * p[:, 26]),
    ]
    return 0.3 * line(polyline_distance(c.u, c.v, path), 0.004, c.pixel)


def pacemaker(c: Canvas, an: Anatomy, p: torch.Tensor) -> torch.Tensor:
    mid, clav = c.mid, c.lcy - c.lhh + 0.1
    gu = mid + 0.4 + 0.15 * p[:, 27]
    gv = clav + 0.1 + 0.05 * p[:, 28]
    box = ramp(0.05 - (c.u - col(gu)).abs(), c.pixel) * ramp(0.032 - (c.v - col(gv)).abs(), c.pixel)
    path = [(gu, gv), (mid + 0.02, an.carina_v + 0.1), (an.heart_cx, an.heart_cy + 0.3 * an.heart_hh * p[:, 29])]
    return box + 0.5 * line(polyline_distance(c.u, c.v, path), 0.004, c.pixel)


KINDS = (endotracheal_tube, central_line, ecg_electrodes, nasogastric_tube, pacemaker)


def draw_devices(c: Canvas, an: Anatomy, p: torch.Tensor) -> torch.Tensor:
    """Full-resolution attenuation of the devices of samples with devices (``p [b, N_PARAMS]`` uniforms)."""
    primary = (p[:, 5] * len(KINDS)).long().clamp(max=len(KINDS) - 1)
    out = torch.zeros_like(c.u)
    for k, (draw, probability) in enumerate(zip(KINDS, KIND_PROBABILITY, strict=True)):
        rows = torch.nonzero((p[:, k] < probability) | (primary == k)).flatten()
        if rows.numel():
            add_rows(out, rows, draw(c.select(rows), an.select(rows), p[rows]))
    return out


def devices_layer(c: Canvas, an: Anatomy, active: torch.Tensor, draws: Draws) -> torch.Tensor:
    """Device attenuation ``[B, H, W]`` for the samples where ``active`` ([B] bool); takes ``N_PARAMS`` uniforms."""
    params = draws.take(N_PARAMS)
    out = torch.zeros_like(c.u)
    rows = torch.nonzero(active).flatten()
    if rows.numel():
        add_rows(out, rows, draw_devices(c.select(rows), an.select(rows), params[rows]))
    return out
