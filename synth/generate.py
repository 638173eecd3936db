"""``python -m synth.generate``: write a versioned synthetic data set (a Zarr store).

For a label task (``--version`` 1/2/3, ``--setting`` 0s/Xs) it draws, per
split, ``per_class x classes`` samples: sample ``i`` has class ``i mod C``,
a condition vector ``c_i`` from :mod:`synth.conditions`, a seed
``s_i = derive_seed(seed, split, i)`` (stored in the ``seeds`` array) and a
latent ``z_i ~ N(0, I)`` drawn from a generator seeded with ``s_i`` alone.
Images come from the generator with constant noise inputs and truncation
``w = w_avg(c_i) + psi (w - w_avg(c_i))`` toward the average w of the sample's
own condition (``--truncation-center condition``, estimated from 1000
latents seeded by the condition) or the global average, and are mapped from
[-1, 1] to uint8 by ``round((x + 1) * 127.5)``. Since nothing depends on the batch, another
``--batch-size`` changes no label, condition or seed and pixels only by
floating-point rounding (at most one grey level).

The store is written block by block through
:class:`datasets.synthetic.SyntheticStoreWriter`; a run killed at any moment
and started again with the same arguments writes only the missing blocks and
ends identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np
import torch
from torchvision.utils import save_image
from tqdm.auto import tqdm

from datasets.findings import SCHEMAS
from datasets.label_tables import read_chexpert_table, read_nih_table
from datasets.label_tasks import SETTINGS, VERSIONS, label_task
from datasets.sample import to_uint8
from datasets.synthetic import StoreLayout, SyntheticStoreWriter, open_synthetic
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError
from plumbing.seeding import derive_seed, generator

from .conditions import ConditionSampler
from .export import DEMO_GENERATOR, LoadedGenerator, load_generator

SPLITS = ("train", "val")


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
        out.append(generated_to_uint8(loaded.generator(zb, cb.to(device), psi=truncation, w_avg=w_avg, noise_mode="const")))
    return np.concatenate(out)


def write_contact_sheet(url: str, per_class: int = 8) -> str:
    """A PNG beside the store: the first ``per_class`` validation images of each class, one row per class."""
    store = open_synthetic(url)
    split = store.split("val")
    rows = []
    for c in range(len(store.classes)):
        idx = np.flatnonzero(split.labels == c)[:per_class]
        tiles = np.zeros((per_class, *split.images.shape[1:]), dtype=np.uint8)
        tiles[: len(idx)] = np.stack([split.read_images(int(i), int(i) + 1)[0] for i in idx])
        rows.append(tiles)
    sheet = torch.from_numpy(np.concatenate(rows)).float() / 255.0
    path = url.rstrip("/").removesuffix(".zarr") + "-contact.png"
    with fsspec.open(path, "wb") as f:
        save_image(sheet, f, nrow=per_class, padding=2, pad_value=1.0, format="png")
    return path


def _condition_vectors(schema_name: str, csv: Path | None) -> np.ndarray:
    if schema_name == "chexpert":
        return read_chexpert_table(csv).vectors
    return read_nih_table(csv).vectors


def build_parser():  # noqa: ANN201 - argparse.ArgumentParser
    parser = make_parser(
        "python -m synth.generate",
        "Generate a versioned synthetic chest X-ray data set (a Zarr store) with a conditional GAN.",
    )
    parser.add_argument("--version", type=int, choices=sorted(VERSIONS), default=3, help="label-task version")
    parser.add_argument("--setting", choices=SETTINGS, default="Xs", help="0s: isolated findings, Xs: combined findings")
    parser.add_argument("--generator", type=Path, default=DEMO_GENERATOR, help="generator (.safetensors) or synth.train checkpoint (.pt); the default is the phantom demo generator")
    parser.add_argument("--out", default="synthetic-v{version}-{setting}.zarr", help="output store: a local path or an fsspec URL; {version} and {setting} are filled in")
    parser.add_argument("--train-per-class", type=int, default=4000, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=1000, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of latents and conditions")
    parser.add_argument("--truncation", type=float, default=1.0, help="truncation psi (1 = none)")
    parser.add_argument("--truncation-center", choices=("condition", "global"), default="condition", help="truncate toward the average w of each sample's condition, or the global average w")
    parser.add_argument("--batch-size", type=int, default=64, help="images per generator call")
    parser.add_argument("--labels-csv", type=Path, default=None, help="label CSV whose empirical finding distribution gives the Xs conditions (default: the CheXpert or NIH file bundled with torchxrayvision, by the generator's schema)")
    parser.add_argument("--block-size", type=int, default=None, help="images per store block, the unit of writing and resuming (a power of two; default by resolution: 1024 up to 128 px, 256 at 256 px)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")
    add_device_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.train_per_class < 1 or args.val_per_class < 1 or args.batch_size < 1:
        raise UserError("--train-per-class, --val-per-class and --batch-size must be positive")
    if not 0.0 <= args.truncation <= 2.0:
        raise UserError("--truncation must lie in [0, 2]")
    device = resolve_device(args.device)
    task = label_task(args.version, args.setting)
    try:
        out = args.out.format(version=task.version, setting=task.setting)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--out {args.out!r}: only {{version}} and {{setting}} may be filled in ({exc})") from None

    loaded = load_generator(args.generator, device)
    if args.generator == DEMO_GENERATOR:
        print(f"using the phantom demo generator {args.generator.name}: trained on phantom radiographs, not on real data", file=sys.stderr)
    elif loaded.trained_on_phantoms:
        print(f"note: {args.generator} was trained on phantom radiographs, not on real data", file=sys.stderr)
    loaded.check_fully_grown()
    schema = next((s for s in SCHEMAS.values() if list(s.columns) == loaded.condition_columns), None)
    if schema is None or loaded.generator.c_dim != len(loaded.condition_columns):
        raise UserError(
            f"generator {args.generator} is conditioned on {loaded.generator.c_dim} values {loaded.condition_columns}; "
            "expected the CheXpert (14) or NIH (15) finding columns"
        )
    vectors = _condition_vectors(schema.name, args.labels_csv)
    sampler = ConditionSampler(task, schema, vectors)
    per_class = {"train": args.train_per_class, "val": args.val_per_class}
    split_sizes = {s: per_class[s] * sampler.num_classes for s in SPLITS}
    resolution = loaded.generator.img_resolution
    attrs = {
        "version": task.version,
        "setting": task.setting,
        "classes": list(task.classes),
        "counts": {s: {c: per_class[s] for c in task.classes} for s in SPLITS},
        "resolution": resolution,
        "c_dim": len(schema.columns),
        "condition_columns": list(schema.columns),
        "generator": {"sha256": loaded.sha256, "config": loaded.network, "training": loaded.training, "trained_on_phantoms": loaded.trained_on_phantoms},
        "condition_source": {
            "file": str(args.labels_csv) if args.labels_csv else f"torchxrayvision bundled {schema.name} labels",
            "sha256": hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest(),
        },
        "truncation_center": args.truncation_center,
        "seed": args.seed,
        "truncation": args.truncation,
    }
    layout = StoreLayout.for_resolution(resolution)
    if args.block_size is not None:
        if args.block_size < 1 or args.block_size & (args.block_size - 1):
            raise UserError(f"--block-size must be a power of two, got {args.block_size}")
        layout = StoreLayout(chunk_images=min(layout.chunk_images, args.block_size), block_size=args.block_size)
    try:
        writer = SyntheticStoreWriter.open(
            out, attrs=attrs, split_sizes=split_sizes, resolution=resolution, c_dim=len(schema.columns),
            overwrite=args.overwrite, layout=layout,
        )
    except (OSError, ValueError, ImportError) as exc:  # fsspec: unknown protocol -> ValueError, missing backend -> ImportError
        raise UserError(f"cannot write the store {out}: {getattr(exc, 'strerror', None) or exc}") from exc
    z_dim = loaded.generator.z_dim
    centers = ConditionCenters(loaded, args.seed, device) if args.truncation_center == "condition" else None
    for split in SPLITS:
        size, block = split_sizes[split], writer.block_size(split)
        pending = writer.pending_blocks(split)
        todo = sum(min((b + 1) * block, size) - b * block for b in pending)
        bar = tqdm(total=size, initial=size - todo, desc=split, unit="img", disable=not pending)
        for b in pending:
            idx = np.arange(b * block, min((b + 1) * block, size))
            conditions = sampler.conditions(args.seed, split, idx)
            seeds = sample_seeds(args.seed, split, idx)
            z = sample_latents(seeds, z_dim)
            images = render(loaded, z, torch.from_numpy(conditions), args.truncation, args.batch_size, device, centers)
            writer.write_block(split, b, images, sampler.labels(idx), conditions, seeds)
            bar.update(len(idx))
        bar.close()
    writer.finish()
    sheet = write_contact_sheet(out)
    print(f"wrote {out}: {split_sizes['train']} training and {split_sizes['val']} validation images of {', '.join(task.classes)}; contact sheet {sheet}")
    return 0


if __name__ == "__main__":
    run_cli(main)
