"""Rendering a synthetic data set's images: per-sample seeds and latents, truncation centres, uint8 output.

Sample ``i`` of a split has the seed ``s_i = derive_seed(seed, split, i)``
and the latent ``z_i ~ N(0, I)`` drawn from a generator seeded with ``s_i``
alone; images come from the generator with constant noise inputs and
truncation toward the average w of each sample's condition
(:class:`ConditionCenters`) or the global average, mapped from [-1, 1] to
uint8 by ``round((x + 1) * 127.5)``. Nothing depends on the batch, so the
batch size changes pixels only by floating-point rounding.
:func:`write_contact_sheet` draws the PNG that ``synth.generate`` writes
beside a store: one row of validation images per class, each row named in a
white left margin (the quality report's row labels,
:mod:`evaluate.quality.row_labels`).
"""

from __future__ import annotations

import fsspec
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from datasets.sample import to_uint8
from datasets.synthetic_store.reader import open_synthetic
from evaluate.quality.row_labels import draw_row_label, label_width
from plumbing.errors import UserError
from plumbing.seeding import derive_seed, generator

from .export import LoadedGenerator


def sample_seeds(seed: int, split: str, indices: np.ndarray) -> np.ndarray:
    """Per-sample seeds ``s_i = derive_seed(seed, split, i)`` (int64)."""
    return np.array([derive_seed(seed, split, int(i)) for i in indices], dtype=np.int64)


def sample_latents(seeds: np.ndarray, z_dim: int) -> torch.Tensor:
    """``[len(seeds), z_dim]`` latents, ``z_i`` drawn from a generator seeded with ``seeds[i]`` alone."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


class ConditionCenters:
    """Per-condition average w, estimated once per distinct condition from latents seeded by it."""

    def __init__(self, loaded: LoadedGenerator, seed: int, device: torch.device, n: int = 1000) -> None:
        self.loaded, self.seed, self.device, self.n = loaded, seed, device, n
        self._cache: dict[bytes, torch.Tensor] = {}

    def __call__(self, conditions: torch.Tensor) -> torch.Tensor:
        rows = []
        for c in conditions:
            key = c.numpy().astype(np.float32).tobytes()
            if key not in self._cache:
                gen = generator(self.seed, "w_avg", key.hex(), device=self.device)
                self._cache[key] = self.loaded.generator.mean_w(c[None].to(self.device), n=self.n, generator=gen)[0]
            rows.append(self._cache[key])
        return torch.stack(rows)


def generated_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Map generator output in [-1, 1] to uint8 grey levels."""
    return to_uint8((images.float() + 1.0) * 0.5).cpu().numpy()  # == round((x + 1) * 127.5): halving is exact


@torch.no_grad()
def render(
    loaded: LoadedGenerator,
    z: torch.Tensor,
    c: torch.Tensor,
    truncation: float,
    batch_size: int,
    device: torch.device,
    centers: ConditionCenters | None = None,
) -> np.ndarray:
    """Images for latents ``z`` and conditions ``c``, ``batch_size`` at a time (uint8 [N,1,H,W]).

    ``centers`` gives per-condition truncation centres; ``None`` uses the global average w.
    """
    out = []
    for start in range(0, len(z), batch_size):
        zb = z[start : start + batch_size].to(device)
        cb = c[start : start + batch_size]
        w_avg = centers(cb) if centers is not None and truncation != 1.0 else None
        x = loaded.generator(zb, cb.to(device), psi=truncation, w_avg=w_avg, noise_mode="const")
        out.append(generated_to_uint8(x))
    return np.concatenate(out)


CONTACT_PADDING = 2
"""White pixels around and between the contact sheet's tiles."""


def write_contact_sheet(url: str, per_class: int = 8) -> str:
    """A PNG beside the store: the first ``per_class`` validation images of each class, one row per class.

    The path is the store's with ``.zarr`` replaced by ``-contact.png`` (any
    fsspec URL). A grey picture on white: a left margin with each row's class
    name (:func:`evaluate.quality.row_labels.label_width` wide), then the
    row's tiles ``CONTACT_PADDING`` pixels apart and from the edges, black
    where a class has fewer than ``per_class`` images.

    Raises:
        UserError: a damaged block (read through :func:`open_synthetic`), or the PNG cannot be written.
    """
    store = open_synthetic(url)
    split = store.split("val")
    height, width = split.images.shape[-2:]  # uint8 [N, 1, H, W]
    pad, font = CONTACT_PADDING, ImageFont.load_default()
    margin = label_width(store.classes, font)
    size = (margin + per_class * (width + pad) + pad, len(store.classes) * (height + pad) + pad)
    sheet = Image.new("L", size, "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(store.classes):
        top = pad + c * (height + pad)
        draw_row_label(draw, name, top, height, font)
        tiles = np.zeros((per_class, height, width), dtype=np.uint8)
        for j, i in enumerate(np.flatnonzero(split.labels == c)[:per_class]):
            tiles[j] = split.read_images(int(i), int(i) + 1)[0, 0]
        row = np.pad(tiles, ((0, 0), (0, 0), (0, pad)), constant_values=255).transpose(1, 0, 2).reshape(height, -1)
        sheet.paste(Image.fromarray(np.ascontiguousarray(row)), (margin + pad, top))
    path = url.rstrip("/").removesuffix(".zarr") + "-contact.png"
    try:
        with fsspec.open(path, "wb") as f:
            sheet.save(f, format="PNG")
    except OSError as exc:
        raise UserError(f"cannot write the contact sheet {path}: {exc.strerror or exc}") from exc
    return path
