"""``python -m synth.generate``: write a versioned synthetic data set (a Zarr store).

For a label task (``--version`` 1/2/3, ``--setting`` 0s/Xs) it draws, per
split, ``per_class x classes`` samples: sample ``i`` has class ``i mod C``,
a condition vector ``c_i`` from :mod:`synth.conditions` (setting 0s: with
Support Devices at the real rate of each class, or cleared with
``--devices clear``; the store records the choice as ``condition_policy``), a seed
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
:class:`datasets.synthetic_store.SyntheticStoreWriter`; a run killed at any
moment (or stopped by a full disk) and started again with the same arguments
writes only the missing blocks and ends identical to an uninterrupted run. A
resumed store keeps its block size (another ``--block-size`` is refused). Run
again on a complete store, it refuses, unless the store's cheap integrity
check (:mod:`datasets.synthetic_store`) finds damaged blocks: those are marked
pending, so running it once more rewrites them.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from datasets.findings import SCHEMAS
from datasets.label_tasks import SETTINGS, VERSIONS, label_task
from datasets.synthetic import DEFAULT_STORE
from datasets.synthetic_store import StoreLayout, SyntheticStoreWriter
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError

from .conditions import DEVICE_POLICIES, ConditionSampler, condition_vectors
from .export import DEMO_GENERATOR, load_generator
from .rendering import ConditionCenters, render, sample_latents, sample_seeds, write_contact_sheet

SPLITS = ("train", "val")
DEMO_DESCRIPTION = f"the shipped phantom demo generator (synth/assets/{DEMO_GENERATOR.name})"


def build_parser():  # noqa: ANN201 - argparse.ArgumentParser
    parser = make_parser(
        "python -m synth.generate",
        "Generate a versioned synthetic chest X-ray data set (a Zarr store) with a conditional GAN.",
    )
    parser.add_argument("--version", type=int, choices=sorted(VERSIONS), default=3, help="label-task version")
    parser.add_argument("--setting", choices=SETTINGS, default="Xs",
                        help="0s: isolated findings, Xs: combined findings")
    parser.add_argument("--generator", type=Path, default=None,
                        help=f"generator (.safetensors) or synth.train checkpoint (.pt); default: {DEMO_DESCRIPTION}")
    parser.add_argument("--out", default=DEFAULT_STORE,
                        help="output store: a local path or an fsspec URL; {version} and {setting} are filled in")
    parser.add_argument("--train-per-class", type=int, default=4000, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=1000, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of latents and conditions")
    parser.add_argument("--truncation", type=float, default=1.0, help="truncation psi (1 = none)")
    parser.add_argument("--truncation-center", choices=("condition", "global"), default="condition",
                        help="truncate toward the average w of each sample's condition, or the global average w")
    parser.add_argument("--batch-size", type=int, default=64, help="images per generator call")
    parser.add_argument("--labels-csv", type=Path, default=None,
                        help="label CSV whose empirical finding distribution gives the Xs conditions; default: the "
                        "CheXpert or NIH file bundled with torchxrayvision, by the generator's schema")
    parser.add_argument("--devices", choices=DEVICE_POLICIES, default=None,
                        help="setting 0s only: the Support Devices column of the conditions. empirical (the "
                        "default) draws each class's full condition vectors, devices at the rate among the class's "
                        "real members (whom the label policy admits with or without devices); clear sets it to 0 "
                        "(the only policy of stores written before this option)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="images per store block, the unit of writing and resuming (a power of two); default: "
                        "the store's own when resuming, else by resolution (1024 up to 128 px, 256 at 256 px)")
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
    if task.setting == "Xs" and args.devices is not None:
        raise UserError("--devices applies to setting 0s only (Xs draws the finding classes' full condition "
                        "vectors, devices included)")
    devices = (args.devices or "empirical") if task.setting == "0s" else None
    try:
        out = args.out.format(version=task.version, setting=task.setting)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--out {args.out!r}: only {{version}} and {{setting}} may be filled in ({exc})") from None

    generator_path = args.generator or DEMO_GENERATOR
    loaded = load_generator(generator_path, device)
    if generator_path == DEMO_GENERATOR:
        print(f"using the phantom demo generator {generator_path.name}: trained on phantom radiographs, "
              "not on real data", file=sys.stderr)
    elif loaded.trained_on_phantoms:
        print(f"note: {generator_path} was trained on phantom radiographs, not on real data", file=sys.stderr)
    loaded.check_fully_grown()
    schema = next((s for s in SCHEMAS.values() if list(s.columns) == loaded.condition_columns), None)
    if schema is None or loaded.generator.c_dim != len(loaded.condition_columns):
        raise UserError(
            f"generator {generator_path} is conditioned on {loaded.generator.c_dim} values {loaded.condition_columns}; "
            "expected the CheXpert (14) or NIH (15) finding columns"
        )
    vectors = condition_vectors(schema.name, args.labels_csv)
    sampler = ConditionSampler(task, schema, vectors, devices=devices)
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
        "generator": {"sha256": loaded.sha256, "config": loaded.network, "training": loaded.training,
                      "trained_on_phantoms": loaded.trained_on_phantoms},
        "condition_source": {
            "file": str(args.labels_csv) if args.labels_csv else f"torchxrayvision bundled {schema.name} labels",
            "sha256": hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest(),
        },
        "truncation_center": args.truncation_center,
        "seed": args.seed,
        "truncation": args.truncation,
    }
    if devices is not None:
        attrs["condition_policy"] = devices
    layout = None  # the writer's default for a new store, the store's own for a resumed one
    if args.block_size is not None:
        if args.block_size < 1 or args.block_size & (args.block_size - 1):
            raise UserError(f"--block-size must be a power of two, got {args.block_size}")
        chunk = min(StoreLayout.for_resolution(resolution).chunk_images, args.block_size)
        layout = StoreLayout(chunk_images=chunk, block_size=args.block_size)
    try:
        writer = SyntheticStoreWriter.open(
            out, attrs=attrs, split_sizes=split_sizes, resolution=resolution, c_dim=len(schema.columns),
            overwrite=args.overwrite, layout=layout,
        )
    except (OSError, ValueError, ImportError) as exc:  # fsspec: unknown protocol (ValueError), missing backend
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
    print(f"wrote {out}: {split_sizes['train']} training and {split_sizes['val']} validation images of "
          f"{', '.join(task.classes)}; contact sheet {sheet}")
    return 0


if __name__ == "__main__":
    run_cli(main)
