"""Build ``lung_masks.npz``: the real lung masks the phantom radiographs draw from.

Source: ``semantic_masks_v7labs_lungs.zip`` shipped in torchxrayvision's
``data`` folder (517 frontal-radiograph lung masks, 0/255 PNGs of 400 to
2000 px; 82 are empty). For every non-empty mask:

1. threshold at 128, keep the two largest connected components (the two
   lungs) and fill their holes;
2. crop to the bounding box of both lungs and record its aspect ratio
   ``height / width``;
3. resample the crop to ``SIZE x SIZE`` (area average, threshold 0.5) and
   pack the bits (``np.packbits`` along rows);
4. measure landmarks in *box coordinates* (x and y in [-1, 1] over the crop,
   y downwards); "side 0" is the lung on the image's left (the patient's
   right), "side 1" the lung on the image's right:

   - ``split_x``: the middle of the gap between the lungs (median over rows
     where both lungs appear);
   - per side: bounding box ``x0, x1, y0, y1`` and the hilum, placed 0.12
     box units lateral to the lung's medial edge (median over 35-55 % of the
     lung's height) at 45 % of its height;
   - ``heart_cx, heart_hw``: centre and half width of the gap between the
     lungs over 55-92 % of the box height (median centre, 80th percentile
     half width), where the heart shadow lies;
   - ``med_cx, med_hw``: the same over 10-45 % (upper mediastinum).

The result is about 1 MB and decodes in milliseconds, where decoding the PNGs
takes about 15 s. Rebuild with ``python -m datasets.assets.build_lung_masks``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from plumbing.cli import make_parser, run_cli
from plumbing.errors import UserError

SIZE = 256
OUT = Path(__file__).resolve().parent / "lung_masks.npz"
META_COLUMNS: tuple[str, ...] = (
    "aspect",
    "split_x",
    "s0_x0", "s0_x1", "s0_y0", "s0_y1", "s0_hx", "s0_hy",
    "s1_x0", "s1_x1", "s1_y0", "s1_y1", "s1_hx", "s1_hy",
    "heart_cx", "heart_hw",
    "med_cx", "med_hw",
)  # fmt: skip


def source_zip() -> Path:
    """torchxrayvision's bundled lung-mask archive."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("torchxrayvision is not installed; pass --source with the lung-mask zip")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "semantic_masks_v7labs_lungs.zip"


def two_lungs(binary: np.ndarray) -> np.ndarray | None:
    """The two largest components with holes filled, or ``None`` when there are fewer than two."""
    labels, count = ndimage.label(binary)
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:2] + 1
    return ndimage.binary_fill_holes(np.isin(labels, keep))


def box_resample(lungs: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Crop to the lungs' bounding box, area-resample to ``size x size``; also the box aspect h / w."""
    ys, xs = np.nonzero(lungs)
    crop = lungs[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    aspect = crop.shape[0] / crop.shape[1]
    image = Image.fromarray(crop.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)
    return np.asarray(image) >= 128, aspect


def landmarks(mask: np.ndarray) -> np.ndarray:
    """The ``META_COLUMNS`` landmarks (except ``aspect``) of a box-normalised two-lung mask."""
    size = mask.shape[0]
    coord = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    ids = np.argsort(sizes)[::-1][:2] + 1
    centres = [np.nonzero(labels == i)[1].mean() for i in ids]
    sides = [labels == ids[int(np.argmin(centres))], labels == ids[int(np.argmax(centres))]]

    s0_inner = np.where(sides[0].any(axis=1), coord[size - 1 - np.argmax(sides[0][:, ::-1], axis=1)], np.nan)
    s1_inner = np.where(sides[1].any(axis=1), coord[np.argmax(sides[1], axis=1)], np.nan)
    both = ~np.isnan(s0_inner) & ~np.isnan(s1_inner)
    split_x = float(np.median((s0_inner[both] + s1_inner[both]) / 2)) if both.any() else 0.0

    values = [split_x]
    for k, side in enumerate(sides):
        ys, xs = np.nonzero(side)
        y0, y1 = coord[ys.min()], coord[ys.max()]
        inner = s0_inner if k == 0 else s1_inner
        rows = (coord >= y0 + 0.35 * (y1 - y0)) & (coord <= y0 + 0.55 * (y1 - y0)) & ~np.isnan(inner)
        medial = float(np.median(inner[rows])) if rows.any() else float(coord[xs].mean())
        hx = medial - 0.12 if k == 0 else medial + 0.12
        values += [coord[xs.min()], coord[xs.max()], y0, y1, hx, y0 + 0.45 * (y1 - y0)]

    def gap(lo: float, hi: float, default_cx: float) -> tuple[float, float]:
        rows = both & (coord >= -1 + 2 * lo) & (coord <= -1 + 2 * hi)
        if not rows.any():
            return default_cx, 0.15
        mid = (s0_inner[rows] + s1_inner[rows]) / 2
        half = (s1_inner[rows] - s0_inner[rows]) / 2
        return float(np.median(mid)), float(np.percentile(half, 80))

    values += [*gap(0.55, 0.92, split_x), *gap(0.10, 0.45, split_x)]
    return np.asarray(values, dtype=np.float32)


def build(source: Path, size: int = SIZE) -> dict[str, np.ndarray]:
    """Decode, clean, normalise and measure every usable mask of ``source``."""
    packed, meta, names = [], [], []
    with zipfile.ZipFile(source) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/"):
                continue
            binary = np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("L")) >= 128
            lungs = two_lungs(binary) if binary.any() else None
            if lungs is None:
                continue
            mask, aspect = box_resample(lungs, size)
            packed.append(np.packbits(mask, axis=1))
            meta.append(np.concatenate([[aspect], landmarks(mask)]).astype(np.float32))
            names.append(Path(name).name)
    return {
        "masks": np.stack(packed),
        "meta": np.stack(meta),
        "meta_columns": np.asarray(META_COLUMNS),
        "names": np.asarray(names),
        "size": np.asarray(size),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("datasets.assets.build_lung_masks", __doc__.splitlines()[0],
                         example="python -m datasets.assets.build_lung_masks --size 256")
    parser.add_argument("--source", type=Path, default=None, help="the lung-mask zip (default: torchxrayvision's)")
    parser.add_argument("--size", type=int, default=SIZE, help="side of the stored masks in pixels")
    parser.add_argument("--out", type=Path, default=OUT, help="output .npz")
    args = parser.parse_args(argv)
    arrays = build(args.source or source_zip(), args.size)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.out)
    size_mb = args.out.stat().st_size / 1e6
    print(f"{len(arrays['masks'])} masks of {args.size} px -> {args.out} ({size_mb:.2f} MB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
