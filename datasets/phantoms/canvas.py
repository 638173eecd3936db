"""The per-batch frame of the phantom renderer: body coordinates and the placed real lung mask.

Three coordinate systems, all with y downwards:

* image ``(x, y)``: the output pixel grid, [-1, 1]^2;
* body ``(u, v)``: the patient, ``(u, v) = R(-theta) ((x, y) - t) / s`` for the
  field of view (scale ``s``, shift ``t``, rotation ``theta``) of the scanner
  style; the anatomy is laid out in body units;
* box ``(bx, by)``: the bounding box of the two lungs, [-1, 1]^2, in which
  the stored real masks and their landmarks live
  (``datasets/assets/build_lung_masks.py``); ``bx = (u - lcx) / lhw``,
  ``by = (v - lcy) / lhh``.

The lung box has half width ``lhw ~ U(0.64, 0.76)`` body units and half
height ``lhh = lhw * aspect`` with the mask's own aspect ratio (clamped to
[0.68, 1.02]), its apex at ``v ~ U(-0.80, -0.70)`` and its centre at
``u ~ U(-0.03, 0.03)``. "Side 0" is the lung on the image's left (the
patient's right), "side 1" the one on the image's right.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from pathlib import Path

import numpy as np
import torch

from .geometry import box_blur, col, pixel_grid, sample_field
from .streams import Draws, Streams

MIN_SCALE = 0.8  # smallest field-of-view scale of any style: a pixel is at most 2 / (0.8 n) body units
ASSET = Path(__file__).resolve().parent.parent / "assets" / "lung_masks.npz"


@dataclasses.dataclass(frozen=True)
class LungAtlas:
    """The stored lung masks (``uint8 [N, 1, S, S]``) and their landmarks (``float32 [N, M]``)."""

    masks: torch.Tensor
    meta: torch.Tensor
    columns: dict[str, int]

    def __len__(self) -> int:
        return self.masks.shape[0]


@functools.lru_cache(maxsize=1)
def lung_atlas() -> LungAtlas:
    """Load (once) the packed masks shipped in ``datasets/assets/lung_masks.npz``."""
    with np.load(ASSET) as data:
        masks = np.unpackbits(data["masks"], axis=2)[:, None]
        meta = data["meta"].astype(np.float32)
        columns = {str(c): i for i, c in enumerate(data["meta_columns"])}
    return LungAtlas(torch.from_numpy(np.ascontiguousarray(masks)), torch.from_numpy(meta), columns)


class RowView:
    """Rows ``index`` of a batch object (:class:`Canvas`, ``Anatomy``), selected lazily.

    A per-sample field (a tensor with ``batch`` rows, or an object with a
    ``select`` method) is indexed when first read and cached, so a finding
    drawn for a few samples copies only the fields it reads; fields named in
    ``keep`` are shared. The class's methods and properties run on the view.
    """

    def __init__(self, base: object, index: torch.Tensor, batch: int, keep: tuple[str, ...] = ()) -> None:
        self.__dict__.update(_base=base, _index=index, _batch=batch, _keep=keep)

    def select(self, index: torch.Tensor) -> RowView:
        return RowView(self._base, self._index[index], self._batch, self._keep)

    def __getattr__(self, name: str):
        attr = getattr(type(self._base), name, None)
        if isinstance(attr, property):
            return attr.fget(self)
        if callable(attr):
            return types.MethodType(attr, self)
        value = getattr(self._base, name)
        if name not in self._keep:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self._batch:
                value = value[self._index]
            elif hasattr(value, "select"):
                value = value.select(self._index)
        self.__dict__[name] = value
        return value


@dataclasses.dataclass
class Canvas:
    """Coordinates and lung anatomy of a batch (tensors ``[B, ...]``; ``x, y`` are shared ``[1, H, W]``)."""

    resolution: int
    pixel: float  # one pixel in body units (upper estimate)
    x: torch.Tensor
    y: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    bx: torch.Tensor
    by: torch.Tensor
    lcx: torch.Tensor  # lung box centre and half sizes in body units, [B]
    lcy: torch.Tensor
    lhw: torch.Tensor
    lhh: torch.Tensor
    fov: torch.Tensor  # [B, 4]: scale, shift x, shift y, rotation
    meta: torch.Tensor
    masks: torch.Tensor  # the selected stored masks, float [B, 1, S, S]
    lung: torch.Tensor  # binary lung mask [B, H, W]
    lung_soft: torch.Tensor  # blurred lung mask [B, H, W]
    side1: torch.Tensor  # 1 where bx lies right of the lungs' split line [B, H, W]
    coarse: torch.Tensor
    fine: torch.Tensor
    columns: dict[str, int]

    @property
    def batch(self) -> int:
        return self.u.shape[0]

    def m(self, name: str) -> torch.Tensor:
        """A landmark of the selected masks, in box coordinates, ``[B]``."""
        return self.meta[:, self.columns[name]]

    def to_u(self, bx: torch.Tensor) -> torch.Tensor:
        """Body ``u`` of box ``bx`` (both ``[B]``)."""
        return self.lcx + bx * self.lhw

    def to_v(self, by: torch.Tensor) -> torch.Tensor:
        """Body ``v`` of box ``by`` (both ``[B]``)."""
        return self.lcy + by * self.lhh

    @property
    def mid(self) -> torch.Tensor:
        """Body ``u`` of the midline (the middle of the gap between the lungs), ``[B]``."""
        return self.to_u(self.m("split_x"))

    def lung_at(self, bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
        """The (bilinear) stored masks looked up at box coordinates ``[B, H, W]`` (or ``[B, n, 1]`` points)."""
        return sample_field(self.masks, bx, by, padding="zeros")[:, 0]

    def at(self, resolution: int) -> Canvas:
        """The same batch on a grid of another resolution (for smooth layers drawn coarser)."""
        if resolution == self.resolution:
            return self
        fov = tuple(self.fov.unbind(1))
        frame = _frame(self.masks, resolution, fov, (self.lcx, self.lcy, self.lhw, self.lhh))  # type: ignore[arg-type]
        return dataclasses.replace(
            self,
            resolution=resolution,
            pixel=self.pixel * self.resolution / resolution,
            side1=(frame["bx"] >= col(self.m("split_x"))).float(),
            **frame,
        )

    def select(self, index: torch.Tensor) -> Canvas:
        """The canvas of the samples ``index`` (a lazy :class:`RowView`; the pixel grid ``x, y`` is shared)."""
        return RowView(self, index, self.batch, keep=("x", "y"))  # type: ignore[return-value]


def _frame(
    masks: torch.Tensor,
    resolution: int,
    fov: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    box: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Image, body and box coordinates and the lung mask at ``resolution`` (see the module docstring)."""
    scale, tx, ty, theta = fov
    lcx, lcy, lhw, lhh = box
    x, y = pixel_grid(resolution, masks.device)
    dx, dy = x - col(tx), y - col(ty)
    cos, sin = col(torch.cos(theta)), col(torch.sin(theta))
    u = (cos * dx + sin * dy) / col(scale)
    v = (-sin * dx + cos * dy) / col(scale)
    bx = (u - col(lcx)) / col(lhw)
    by = (v - col(lcy)) / col(lhh)
    lung = (sample_field(masks, bx, by, padding="zeros") >= 0.5).float()
    soft = box_blur(lung, max(1, resolution // 96))[:, 0]
    return {"x": x, "y": y, "u": u, "v": v, "bx": bx, "by": by, "lung": lung[:, 0], "lung_soft": soft}


def make_canvas(
    draws: Draws,
    streams: Streams,
    resolution: int,
    fov: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
) -> Canvas:
    """Place the body and one real lung mask per sample.

    Args:
        draws: the batch's uniforms (this takes 6 columns).
        streams: the batch's noise fields.
        resolution: output side in pixels.
        fov: ``(scale, shift_x, shift_y, rotation_radians)``, each ``[B]``.
    """
    atlas = lung_atlas()
    pick = draws.take(1)[:, 0]
    index = (pick * len(atlas)).long().clamp(max=len(atlas) - 1).cpu()
    meta = atlas.meta[index].to(device)
    masks = atlas.masks[index].to(device=device, dtype=torch.float32)
    aspect = meta[:, atlas.columns["aspect"]].clamp(0.68, 1.02)
    lhw = draws.range(0.64, 0.76)
    lhh = lhw * aspect * draws.range(0.96, 1.04)
    apex = draws.range(-0.80, -0.70)
    lcx = draws.range(-0.03, 0.03)
    lcy = apex + lhh
    draws.take(1)  # reserved
    box = (lcx, lcy, lhw, lhh)
    frame = _frame(masks, resolution, fov, box)
    split = meta[:, atlas.columns["split_x"]]
    pixel = 2.0 / resolution / MIN_SCALE
    return Canvas(
        resolution=resolution,
        pixel=pixel,
        **frame,
        lcx=lcx,
        lcy=lcy,
        lhw=lhw,
        lhh=lhh,
        fov=torch.stack(fov, dim=1),
        meta=meta,
        masks=masks,
        side1=(frame["bx"] >= col(split)).float(),
        coarse=streams.coarse,
        fine=streams.fine,
        columns=atlas.columns,
    )
