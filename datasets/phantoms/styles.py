"""Scanner styles of the two phantom domains: field of view, contrast curve, blur, noise, burned-in markers.

A :class:`DomainStyle` holds the ranges each per-sample parameter is drawn
from (uniformly). The image is made from the attenuation map ``A`` as

1. window: ``a = clamp((A - lo) / (hi - lo), 0, 1)``;
2. contrast curve: ``gamma``: ``a^g``; ``sigmoid``: the logistic
   ``(S(k (a - m)) - S(-k m)) / (S(k (1 - m)) - S(-k m))``;
3. blur: a Gaussian of ``sigma`` pixels at 256 px (scaled with the resolution);
4. noise: ``+ n sqrt(0.05 + I) z`` with ``z`` standard normal per pixel;
5. markers: text stamps (a tiny 5x7 pixel font, stamped with ``grid_sample``),
   white, optionally on a black plate;
6. clamping to [0, 1].

``phantom`` imitates CheXpert (many portable AP films): a gamma curve, more
noise, little blur, a tight field of view, an "R"/"L" side letter in an upper
corner and "PORTABLE" / "AP" / "UPRIGHT" text at the top. ``phantom-nih``
imitates ChestX-ray14: a steeper sigmoid curve, low noise, more blur, a wider
field of view lower in the image, text on a black plate in a lower corner,
and support devices the NIH labels do not mention in 12 % of the images (NIH
has no device label, yet its radiographs show devices).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import gaussian_blur, ramp, sample_field
from .streams import Draws, Streams

FONT: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".###."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": (".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."),
    " ": (".....",) * 7,
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
}


@functools.cache
def text_bitmap(text: str) -> torch.Tensor:
    """``text`` in the 5x7 font with one blank column between glyphs and a blank border, ``[1, 1, 9, 6n + 1]``."""
    glyphs = [np.array([[ch == "#" for ch in row] for row in FONT[t]], dtype=np.float32) for t in text]
    rows = np.concatenate([np.pad(g, ((1, 1), (1, 0))) for g in glyphs] + [np.zeros((9, 1), np.float32)], axis=1)
    return torch.from_numpy(rows)[None, None]


@dataclass(frozen=True)
class Marker:
    """A burned-in text: candidate corner positions (image coordinates of its centre) and glyph height."""

    texts: tuple[str, ...]
    anchors: tuple[tuple[float, float], ...]
    height: tuple[float, float]
    plate: bool = False
    probability: float = 1.0


@dataclass(frozen=True)
class DomainStyle:
    """Per-sample parameter ranges of one scanner domain (see the module docstring)."""

    name: str
    curve: str  # "gamma" or "sigmoid"
    window_lo: tuple[float, float]
    window_hi: tuple[float, float]
    gamma: tuple[float, float]
    slope: tuple[float, float]
    midpoint: tuple[float, float]
    noise: tuple[float, float]
    blur: tuple[float, float]
    scale: tuple[float, float]
    shift_x: tuple[float, float]
    shift_y: tuple[float, float]
    rotation_deg: tuple[float, float]
    markers: tuple[Marker, ...]
    unlabelled_devices: float  # probability of support devices the labels do not mention


STYLES: dict[str, DomainStyle] = {
    "phantom": DomainStyle(
        name="phantom",
        curve="gamma",
        window_lo=(-0.04, 0.06),
        window_hi=(0.95, 1.1),
        gamma=(0.75, 1.15),
        slope=(1.0, 1.0),
        midpoint=(0.5, 0.5),
        noise=(0.03, 0.06),
        blur=(0.2, 0.6),
        scale=(0.95, 1.08),
        shift_x=(-0.05, 0.05),
        shift_y=(-0.06, 0.04),
        rotation_deg=(-3.0, 3.0),
        markers=(
            Marker(("R", "L"), ((-0.82, -0.82), (0.82, -0.82)), (0.07, 0.1)),
            Marker(
                ("PORTABLE", "AP", "UPRIGHT", "SUPINE"), ((-0.45, -0.92), (0.45, -0.92)), (0.035, 0.05), probability=0.6
            ),
        ),
        unlabelled_devices=0.0,
    ),
    "phantom-nih": DomainStyle(
        name="phantom-nih",
        curve="sigmoid",
        window_lo=(0.0, 0.08),
        window_hi=(1.0, 1.15),
        gamma=(1.0, 1.0),
        slope=(6.0, 9.0),
        midpoint=(0.42, 0.52),
        noise=(0.003, 0.008),
        blur=(0.9, 1.6),
        scale=(0.8, 0.9),
        shift_x=(-0.03, 0.03),
        shift_y=(0.04, 0.12),
        rotation_deg=(-1.5, 1.5),
        markers=(
            Marker(("PA", "PA ERECT", "AP"), ((-0.62, 0.9), (0.62, 0.9)), (0.04, 0.055), plate=True),
            Marker(("0123", "4567", "8901"), ((0.86, 0.0),), (0.035, 0.045), probability=0.5),
        ),
        unlabelled_devices=0.12,
    ),
}


@dataclass
class StyleParams:
    """Drawn style parameters of a batch (each ``[B]``), and the marker choices."""

    fov: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    lo: torch.Tensor
    hi: torch.Tensor
    gamma: torch.Tensor
    slope: torch.Tensor
    midpoint: torch.Tensor
    noise: torch.Tensor
    blur: torch.Tensor
    marker_draws: list[torch.Tensor]
    extra_devices: torch.Tensor


def draw_style(style: DomainStyle, draws: Draws) -> StyleParams:
    """Draw a batch's style parameters (a fixed number of columns per domain-independent slot)."""
    scale = draws.range(*style.scale)
    tx = draws.range(*style.shift_x)
    ty = draws.range(*style.shift_y)
    theta = draws.range(*style.rotation_deg) * (math.pi / 180.0)
    params = StyleParams(
        fov=(scale, tx, ty, theta),
        lo=draws.range(*style.window_lo),
        hi=draws.range(*style.window_hi),
        gamma=draws.range(*style.gamma),
        slope=draws.range(*style.slope),
        midpoint=draws.range(*style.midpoint),
        noise=draws.range(*style.noise),
        blur=draws.range(*style.blur),
        marker_draws=[draws.take(5) for _ in range(2)],
        extra_devices=draws.take(1)[:, 0] < style.unlabelled_devices,
    )
    return params


def contrast(att: torch.Tensor, style: DomainStyle, p: StyleParams) -> torch.Tensor:
    """Window and contrast curve: attenuation ``[B, 1, H, W]`` -> intensity in [0, 1]."""
    view = (-1, 1, 1, 1)
    a = ((att - p.lo.view(view)) / (p.hi - p.lo).view(view)).clamp_(0.0, 1.0)
    if style.curve == "gamma":
        return a.pow_(p.gamma.view(view))
    k, m = p.slope.view(view), p.midpoint.view(view)
    low, high = torch.sigmoid(-k * m), torch.sigmoid(k * (1.0 - m))
    return torch.sigmoid(k * (a - m)).sub_(low).div_(high - low)


def detector(image: torch.Tensor, style: DomainStyle, p: StyleParams, streams: Streams) -> torch.Tensor:
    """Blur then signal-dependent Gaussian noise, ``[B, 1, H, W]``."""
    factor = image.shape[-1] / 256.0
    image = gaussian_blur(image, p.blur * factor, style.blur[1] * factor)
    return image + p.noise.view(-1, 1, 1, 1) * (0.05 + image.clamp(min=0.0)).sqrt() * streams.pixel


def row_band(lo: float, hi: float, resolution: int) -> tuple[int, int]:
    """The pixel rows whose centres may lie in image ``y`` range [lo, hi] (one row of margin)."""
    r0 = int(math.floor((lo + 1.0) / 2.0 * resolution)) - 1
    r1 = int(math.ceil((hi + 1.0) / 2.0 * resolution)) + 1
    return max(0, r0), min(resolution, r1)


def stamp_markers(
    image: torch.Tensor, style: DomainStyle, p: StyleParams, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Burn the domain's text markers into ``image [B, 1, H, W]`` in place (image coordinates ``x, y [1, H, W]``).

    Per marker and sample, five uniforms choose: presence, text, anchor,
    glyph height and brightness. The stamp maps the text bitmap (9 rows: 7
    font rows and a blank border) onto a box of 9/7 glyph heights centred at
    the anchor, looked up bilinearly; only the band of rows it can touch is computed.
    """
    resolution = image.shape[-1]
    for marker, u in zip(style.markers, p.marker_draws, strict=True):
        present = u[:, 0] < marker.probability
        text_id = (u[:, 1] * len(marker.texts)).long().clamp(max=len(marker.texts) - 1)
        anchor_id = (u[:, 2] * len(marker.anchors)).long().clamp(max=len(marker.anchors) - 1)
        anchors = torch.tensor(marker.anchors, dtype=image.dtype, device=image.device)[anchor_id]
        height = marker.height[0] + (marker.height[1] - marker.height[0]) * u[:, 3]
        level = 0.88 + 0.12 * u[:, 4]
        reach = marker.height[1] * 9.0 / 14.0
        r0, r1 = row_band(
            min(a[1] for a in marker.anchors) - reach, max(a[1] for a in marker.anchors) + reach, resolution
        )
        xb, yb = x[:, r0:r1], y[:, r0:r1]
        for t, text in enumerate(marker.texts):
            rows = torch.nonzero(present & (text_id == t)).flatten()
            if rows.numel() == 0:
                continue
            bitmap = text_bitmap(text).to(image.device, image.dtype)
            aspect = bitmap.shape[-1] / bitmap.shape[-2]
            h = height[rows].view(-1, 1, 1) * 9.0 / 7.0
            cx, cy = anchors[rows, 0].view(-1, 1, 1), anchors[rows, 1].view(-1, 1, 1)
            half_w = h * aspect / 2.0
            cx = torch.minimum(torch.maximum(cx, half_w - 0.98), 0.98 - half_w)  # keep the text inside the image
            gx = (xb - cx) / half_w
            gy = (yb - cy) / (h / 2.0)
            alpha = sample_field(bitmap.expand(rows.numel(), -1, -1, -1), gx, gy, padding="zeros")
            sub = image[rows, :, r0:r1]
            if marker.plate:
                plate = ramp(1.0 - gx.abs(), 0.05) * ramp(1.0 - gy.abs(), 0.1)
                sub = sub * (1.0 - 0.92 * plate[:, None])
            image[rows, :, r0:r1] = sub * (1.0 - alpha) + alpha * level[rows].view(-1, 1, 1, 1)
    return image


def shortcut_stamp(
    image: torch.Tensor, marks: torch.Tensor, lung: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Stamp the shortcut mark: value ``k >= 1`` draws a bright square in slot ``k`` along the bottom edge.

    Slot ``k`` is centred at ``(0.86 - 0.22 (k - 1), 0.86)`` (image coordinates),
    0.09 wide, outlined in black; it is cleared wherever the lung mask is, so
    it always lies outside the lungs. Value 0 draws nothing.
    """
    rows = torch.nonzero(marks > 0).flatten()
    if rows.numel() == 0:
        return image
    r0, r1 = row_band(0.86 - 0.06, 0.86 + 0.06, image.shape[-1])
    k = marks[rows].to(image.dtype).view(-1, 1, 1)
    cx = 0.86 - 0.22 * (k - 1.0)
    pixel = 2.0 / image.shape[-1]
    dist = torch.maximum((x[:, r0:r1] - cx).abs(), (y[:, r0:r1] - 0.86).abs())
    inner = ramp(0.045 - dist, pixel)
    outer = ramp(0.06 - dist, pixel)
    keep = 1.0 - lung[rows, r0:r1]
    sub = image[rows, 0, r0:r1]
    image[rows, 0, r0:r1] = sub * (1.0 - outer * keep) + inner * keep * 0.97
    return image
