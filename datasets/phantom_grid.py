"""``python -m datasets.phantom_grid``: a labelled picture grid of phantom chest radiographs.

The data sets themselves are :class:`datasets.phantoms.dataset.PhantomDataset`
(registered as ``phantom`` and ``phantom-nih``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plumbing.cli import check_output_folder, make_parser, run_cli
from plumbing.errors import UserError
from plumbing.files import atomic_path

from .findings import FindingSchema
from .label_tasks import SETTINGS, VERSIONS, parse_task
from .phantoms.dataset import SPECS, SPLITS, PhantomDataset
from .phantoms.render import check_resolution, rendered_findings
from .sample import FINDINGS, IMAGE, LABEL, to_uint8

# ---------------------------------------------------------------- picture grid

ABBREVIATIONS: dict[str, str] = {
    "No Finding": "NF",
    "Enlarged Cardiomediastinum": "ECM",
    "Cardiomegaly": "Cmeg",
    "Lung Opacity": "Opac",
    "Lung Lesion": "Les",
    "Edema": "Edema",
    "Consolidation": "Cons",
    "Pneumonia": "Pna",
    "Atelectasis": "Atel",
    "Pneumothorax": "PTX",
    "Pleural Effusion": "Eff",
    "Effusion": "Eff",
    "Pleural Other": "PlO",
    "Fracture": "Fx",
    "Support Devices": "SD",
    "Infiltration": "Infl",
    "Mass": "Mass",
    "Nodule": "Nod",
    "Emphysema": "Emph",
    "Fibrosis": "Fib",
    "Pleural_Thickening": "PlTh",
    "Hernia": "Hern",
}


def caption(vector: np.ndarray, shown: np.ndarray, schema: FindingSchema) -> str:
    """Abbreviations of the findings a tile shows; ``?`` marks an uncertain label rendered as present."""
    parts = [
        ABBREVIATIONS.get(c, c) + ("?" if vector[k] == -1 else "") for k, c in enumerate(schema.columns) if shown[k]
    ]
    return " ".join(parts) if parts else "-"


def _wrap(text: str, width: int, draw: Any, font: Any) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def picture_grid(dataset: PhantomDataset, n: int, batch: int = 64) -> Any:
    """A PIL image of the first ``n`` samples, each captioned with its shown findings (and class)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    res = dataset.resolution
    line_h = 11
    caption_h = 3 * line_h + 2
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = Image.new("L", (cols * (res + 2), rows * (res + caption_h + 2)), color=255)
    draw = ImageDraw.Draw(grid)
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        samples = dataset.__getitems__(idx)
        vectors = np.stack([s[FINDINGS].numpy() for s in samples])
        shown = rendered_findings(vectors, [dataset.sample_seed(i) for i in idx]).numpy()
        for k, (i, sample) in enumerate(zip(idx, samples, strict=True)):
            x0, y0 = (i % cols) * (res + 2), (i // cols) * (res + caption_h + 2)
            pixels = to_uint8(sample[IMAGE][0]).numpy()
            grid.paste(Image.fromarray(pixels), (x0, y0))
            text = caption(vectors[k], shown[k], dataset.schema)
            if dataset.task is not None:
                text = f"[{dataset.task.classes[sample[LABEL]]}] {text}"
            for j, part in enumerate(_wrap(text, res, draw, font)[:3]):
                draw.text((x0 + 1, y0 + res + 1 + j * line_h), part, fill=0, font=font)
    return grid


def check_output(out: Path) -> Path:
    """The folder of ``out``; a :class:`UserError` when it is missing or not writable, or ``out`` is a folder."""
    folder = out.parent if str(out.parent) else Path(".")
    check_output_folder(folder, "--out", out)
    if not folder.is_dir():
        raise UserError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--out {out}: folder {folder} is not writable")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a .png file name")
    return folder


def save_atomically(image: Any, out: Path) -> None:
    """Write a PNG to ``out`` via a temporary file in the same folder, so nothing half-written remains."""
    check_output(out)
    try:
        with atomic_path(out) as tmp:
            image.save(tmp, format="PNG")
    except OSError as exc:
        raise UserError(f"--out {out} could not be written ({exc.strerror or exc})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "python -m datasets.phantom_grid", "Write a labelled picture grid of phantom chest radiographs.",
                         example="python -m datasets.phantom_grid --n 32 --out phantom-grid.png")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--out", type=Path, default=Path("grid.png"), help="output PNG")
    parser.add_argument("--domain", default="phantom", choices=sorted(SPECS), help="phantom domain")
    parser.add_argument("--resolution", type=int, default=128, help="image side in pixels (32-512)")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed")
    parser.add_argument("--split", default="train", choices=sorted(SPLITS), help="seed stream")
    parser.add_argument(
        "--version", default=None, help=f"label-task version ({', '.join(map(str, VERSIONS))}); shows its classes"
    )
    parser.add_argument("--setting", default="0s", help=f"label-task setting ({', '.join(SETTINGS)}), with --version")
    parser.add_argument("--balanced", action="store_true", help="draw the task's classes uniformly")
    parser.add_argument(
        "--shortcut", type=float, default=None, help="probability that the shortcut mark agrees with the class"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 4096:
        raise UserError(f"--n must be from 1 to 4096, not {args.n}")
    check_resolution(args.resolution)
    check_output(args.out)
    task = None
    if args.version is not None:
        task = parse_task(args.version, args.setting)
    dataset = PhantomDataset(
        args.domain,
        args.split,
        task,
        args.resolution,
        length=args.n,
        seed=args.seed,
        shortcut=args.shortcut,
        balanced=args.balanced,
    )
    save_atomically(picture_grid(dataset, args.n), args.out)
    print(f"wrote {args.n} {args.domain} images ({args.resolution} px) to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
