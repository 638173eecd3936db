"""``python -m synth.generate``: write a versioned synthetic data set (a Zarr store).

The command parses and checks its options and calls
:func:`synth.generation.generate_store`, whose docstring says what a store
holds and how it is drawn (labels, conditions, seeds, latents, truncation),
written and resumed: a run killed at any moment (or stopped by a full disk)
and started again with the same arguments writes only the missing blocks and
ends identical to an uninterrupted run; run again on a complete store, it
refuses, unless damaged blocks were found, which it marks pending for the
next run to rewrite.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from datasets.label_tasks import SETTINGS, VERSIONS, label_task
from datasets.synthetic import DEFAULT_STORE
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError
from plumbing.storage import add_storage_option_arg, apply_storage_options

from .conditions import DEVICE_POLICIES
from .export import DEMO_GENERATOR, load_generator
from .generation import GenerationSettings, generate_store

DEFAULTS = GenerationSettings()
DEMO_DESCRIPTION = f"the shipped phantom demo generator (synth/assets/{DEMO_GENERATOR.name})"


def build_parser():  # noqa: ANN201 - argparse.ArgumentParser
    parser = make_parser(
        "python -m synth.generate",
        "Generate a versioned synthetic chest X-ray data set (a Zarr store) with a conditional GAN.",
                         example="python -m synth.generate --version 3 --setting Xs")
    parser.add_argument("--version", type=int, choices=sorted(VERSIONS), default=DEFAULTS.version,
                        help="label-task version")
    parser.add_argument("--setting", choices=SETTINGS, default=DEFAULTS.setting,
                        help="0s: isolated findings, Xs: combined findings")
    parser.add_argument("--generator", type=Path, default=None,
                        help=f"generator (.safetensors) or synth.train checkpoint (.pt); default: {DEMO_DESCRIPTION}")
    parser.add_argument("--out", default=DEFAULT_STORE,
                        help="output store: a local path or an fsspec URL; {version} and {setting} are filled in")
    parser.add_argument("--train-per-class", type=int, default=DEFAULTS.train_per_class,
                        help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=DEFAULTS.val_per_class, help="validation images per class")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of latents and conditions")
    parser.add_argument("--truncation", type=float, default=DEFAULTS.truncation, help="truncation psi (1 = none)")
    parser.add_argument("--truncation-center", choices=("condition", "global"),
                        default=DEFAULTS.truncation_center,
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
    add_storage_option_arg(parser)
    add_device_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_storage_options(args.storage_option, [args.out])
    if args.train_per_class < 1 or args.val_per_class < 1 or args.batch_size < 1:
        raise UserError("--train-per-class, --val-per-class and --batch-size must be positive")
    if not 0.0 <= args.truncation <= 2.0:
        raise UserError("--truncation must lie in [0, 2]")
    device = resolve_device(args.device)
    task = label_task(args.version, args.setting)
    if task.setting == "Xs" and args.devices is not None:
        raise UserError("--devices applies to setting 0s only (Xs draws the finding classes' full condition "
                        "vectors, devices included)")
    try:
        out = args.out.format(version=task.version, setting=task.setting)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--out {args.out!r}: only {{version}} and {{setting}} may be filled in ({exc})") from None
    if args.block_size is not None and (args.block_size < 1 or args.block_size & (args.block_size - 1)):
        raise UserError(f"--block-size must be a power of two, got {args.block_size}")

    generator_path = args.generator or DEMO_GENERATOR
    loaded = load_generator(generator_path, device)
    if generator_path == DEMO_GENERATOR:
        print(f"using the phantom demo generator {generator_path.name}: trained on phantom radiographs, "
              "not on real data", file=sys.stderr)
    elif loaded.trained_on_phantoms:
        print(f"note: {generator_path} was trained on phantom radiographs, not on real data", file=sys.stderr)
    settings = GenerationSettings(
        version=task.version, setting=task.setting, train_per_class=args.train_per_class,
        val_per_class=args.val_per_class, seed=args.seed, truncation=args.truncation,
        truncation_center=args.truncation_center, labels_csv=args.labels_csv, devices=args.devices,
    )
    store = generate_store(loaded, out, settings, device, batch_size=args.batch_size, block_size=args.block_size,
                           overwrite=args.overwrite)
    print(f"wrote {store.url}: {store.split_sizes['train']} training and {store.split_sizes['val']} validation "
          f"images of {', '.join(store.classes)}; contact sheet {store.contact_sheet}")
    return 0


if __name__ == "__main__":
    run_cli(main)
