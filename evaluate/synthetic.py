"""``python -m evaluate.synthetic STORE --reference DATASET``: how far a synthetic store can be trusted.

Measures a store written by ``synth.generate`` against a labelled reference
data set of the same task (:mod:`evaluate.quality.measurement`: fidelity, coverage,
label fidelity, usefulness, memorisation, class balance and provenance) and
writes ``quality.json``, ``quality.md`` and PNG figures
(:mod:`evaluate.quality.report`) into ``--out`` (default: ``<STORE>.quality``
beside the store). Every option is checked before anything is trained or
written; the classifiers and features it trains or computes are cached under
``--runs-dir``, so a second report against the same reference is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from datasets.registry import names
from datasets.synthetic_store.reader import open_synthetic
from evaluate.quality.features import XRV_CHOICE
from evaluate.quality.measurement import QualityConfig, measure
from evaluate.quality.report import write_report
from models.backbones import backbone_names
from plumbing.cli import (
    add_device_arg,
    add_runs_dir_arg,
    check_options,
    check_output_folder,
    data_options,
    make_parser,
    resolve_device,
    run_cli,
)
from plumbing.errors import UserError
from plumbing.lr_selection import parse_lr_grid
from plumbing.precision import add_amp_arg, use_bf16_autocast
from plumbing.run_folders import command_line
from plumbing.runtime import Runtime
from plumbing.storage import add_storage_option_arg, apply_storage_options

PROG = "python -m evaluate.synthetic"
DEFAULTS = QualityConfig()


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = make_parser(PROG, "Measure a synthetic store against a labelled reference data set: fidelity, "
                               "coverage, label fidelity, usefulness, memorisation; writes a Markdown report.",
                         example="python -m evaluate.synthetic v3-Xs.zarr --reference phantom")
    parser.add_argument("store", help="the synthetic store (a synth.generate output: local folder or URL)")
    data = parser.add_argument_group("data")
    add_storage_option_arg(data)
    data.add_argument("--reference", default=d.reference, help=f"reference data set with the store's classes "
                      f"({', '.join(n for n in names() if n != 'synthetic')})")
    data.add_argument("--reference-root", default=None, help="root of a real reference (else its environment "
                      "variable)")
    data.add_argument("--split", default=d.split, help="the store's split to measure (train or val)")
    data.add_argument("--images", type=int, default=d.images,
                      help="synthetic images measured (equal per class); the reference gives twice as many")
    data.add_argument("--train-images", type=int, default=d.train_images,
                      help="training images of each of the two classifiers (reference and synthetic)")
    data.add_argument("--image-size", type=int, default=None, help="pixels of every image set (default: the store's)")
    data.add_argument("--training-data", default=None,
                      help="data set the generator learned from, for memorisation (default: the store's provenance)")
    data.add_argument("--training-root", default=None, help="root of --training-data (else its environment variable)")
    data.add_argument("--training-images", type=int, default=d.training_images,
                      help="at most this many generator training images are compared")
    model = parser.add_argument_group("features and classifiers")
    model.add_argument("--features", default=None,
                       help=f"feature extractor: PATH of a backbone or classifier file, or {XRV_CHOICE} "
                            "(torchxrayvision's DenseNet-121, weights already on disk); default: the classifier "
                            "trained on the reference")
    model.add_argument("--backbone", choices=backbone_names(), default=d.backbone, help="backbone of both classifiers")
    model.add_argument("--epochs", type=int, default=d.epochs, help="epochs of each classifier")
    model.add_argument("--batch-size", type=int, default=d.batch_size, help="classifier minibatch size")
    model.add_argument("--lr", type=float, default=None, help="learning rate (none given: chosen from --lr-grid)")
    model.add_argument("--lr-grid", default=",".join(f"{v:g}" for v in d.lr_grid),
                       help="learning rates tried for one epoch each; the best by validation balanced accuracy wins")
    add_amp_arg(model)
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--k", type=int, default=d.k, help="nearest neighbours of precision/recall/density/coverage")
    metrics.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap rounds of the FD interval")
    metrics.add_argument("--copy-factor", type=float, default=d.copy_factor,
                         help="near-copy threshold as a fraction of the 1%% quantile of the training images' own "
                              "nearest-neighbour distances")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="report folder (default: <STORE>.quality beside the "
                     "store)")
    out.add_argument("--seed", type=int, default=d.seed, help="seed of every subset, split and classifier")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_runs_dir_arg(parser)
    add_device_arg(parser)
    return parser


def _config(args: argparse.Namespace) -> QualityConfig:
    checks = [
        (args.images >= 2 and args.train_images >= 2, "--images and --train-images must be at least 2"),
        (args.training_images >= 2, "--training-images must be at least 2"),
        (args.image_size is None or 16 <= args.image_size <= 1024, "--image-size must lie in [16, 1024]"),
        (args.epochs >= 1 and args.batch_size >= 1, "--epochs and --batch-size must be positive"),
        (args.lr is None or 0 < args.lr < float("inf"), "--lr must be a positive finite number"),
        (args.k >= 1, "--k must be positive"),
        (args.bootstrap >= 2, "--bootstrap must be at least 2"),
        (0 < args.copy_factor <= 1, "--copy-factor must lie in (0, 1]"),
    ]
    check_options(checks)
    if args.reference == "synthetic":
        raise UserError("--reference must be a labelled data set of real (or phantom) images, not a store")
    return QualityConfig(
        reference=args.reference, reference_root=args.reference_root, split=args.split, images=args.images,
        train_images=args.train_images, image_size=args.image_size, features=args.features,
        training_data=args.training_data, training_root=args.training_root, training_images=args.training_images,
        backbone=args.backbone, epochs=args.epochs, lr=args.lr, lr_grid=parse_lr_grid(args.lr_grid),
        batch_size=args.batch_size, k=args.k, bootstrap=args.bootstrap, copy_factor=args.copy_factor,
        seed=args.seed,
    )


def _out_folder(store: str, out: Path | None) -> Path:
    if out is not None:
        folder = out
    elif "://" in store:
        raise UserError(f"{store} is not a local folder: pass --out for the report")
    else:
        path = Path(store.rstrip("/"))
        folder = path.with_name(path.name + ".quality")
    check_output_folder(folder, "--out")
    parent = folder.parent if str(folder.parent) else Path(".")
    if not folder.exists() and not parent.is_dir():
        raise UserError(f"--out {folder}: folder {parent} does not exist")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_storage_options(args.storage_option, [args.store])
    cfg = _config(args)
    device = resolve_device(args.device)
    store = open_synthetic(args.store)
    out = _out_folder(args.store, args.out)
    check_output_folder(args.runs_dir, "--runs-dir")
    # the image sets are read into memory once (no loader workers); the classifiers train from them
    runtime = Runtime(device, use_bf16_autocast(args.amp, device), 0, not args.no_progress, args.runs_dir)
    with data_options({"reference": "--reference-root", "training": "--training-root"}):
        measured = measure(store, cfg, runtime, command_line(PROG, argv))
    files = write_report(out, measured)
    figures = measured.figures
    headline = {
        "label_fidelity": figures["label_fidelity"]["agreement"],
        "usefulness_ratio": figures["usefulness"]["ratio"],
        "fd_to_floor": figures["fidelity"]["all"].get("ratio_to_floor"),
    }
    print(json.dumps(headline), file=sys.stderr)
    print(f"report: {files[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
