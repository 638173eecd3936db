"""Evidence on the phantom shift: no alignment, DCAN, "ours" and "ours" + diversity over seeds.

    python -m bench.adapt_phantom --runs-dir runs/adapt-phantom --device cpu

1. Writes a v1-0s store from the shipped demo generator (``python -m
   synth.generate --version 1 --setting 0s``, ``--train-per-class`` images
   per class) unless ``--store`` names one.
2. Trains the grid ``--alignment none,dcan,ours --seeds 0,1,2`` and
   ``ours`` with ``--diversity`` on synthetic -> ``phantom-nih``
   (the seed's synthetic-to-real block), and the same grid on ``phantom``
   -> ``phantom-nih`` (its real-to-real block), each a ``python -m
   adapt.train`` process; a finished cell is skipped, so the benchmark
   resumes where it stopped.
3. Prints ``python -m adapt.report`` for the final-step figure and the oracle.

Every run trains from scratch (no ImageNet weights here), with batch norm
trained (``--batchnorm auto``), at ``--image-size`` with ``--steps`` steps.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from plumbing.cli import make_parser, run_cli

from .run_module import run_module

PROG = "python -m bench.adapt_phantom"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Adaptation on the phantom shift: none, dcan, ours, ours + diversity over seeds.")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/adapt-phantom"), help="folder of every run")
    parser.add_argument("--store", type=Path, default=None,
                        help="a v1-0s synthetic store (default: written into --runs-dir from the demo generator)")
    parser.add_argument("--train-per-class", type=int, default=1000, help="store images per class (training split)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=400, help="steps of every run")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    parser.add_argument("--image-size", type=int, default=48, help="image side in pixels")
    parser.add_argument("--backbone", default="resnet18", help="residual backbone")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the backbone")
    parser.add_argument("--diversity", type=float, default=1.0, help="diversity weight of the ours+div cells")
    parser.add_argument("--eval-length", type=int, default=2000, help="target evaluation images")
    parser.add_argument("--device", default="cpu", help="torch device")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    store = args.store or args.runs_dir / "synthetic-v1-0s.zarr"
    if not store.exists():
        run_module(["synth.generate", "--version", "1", "--setting", "0s", "--out", str(store), "--train-per-class",
              str(args.train_per_class), "--val-per-class", str(max(args.train_per_class // 5, 1)),
              "--device", args.device])
    common = ["adapt.train", "--target", "phantom-nih", "--version", "1", "--setting", "0s", "--backbone",
              args.backbone, "--init", "scratch", "--image-size", str(args.image_size), "--steps", str(args.steps),
              "--eval-every", str(args.eval_every), "--lr", str(args.lr), "--eval-length", str(args.eval_length),
              "--seeds", args.seeds, "--runs-dir", str(args.runs_dir), "--device", args.device, "--no-progress"]
    for source in (["--source", "synthetic", "--source-store", str(store)], ["--source", "phantom"]):
        run_module([*common, *source, "--alignment", "none,dcan,ours"])
        run_module([*common, *source, "--alignment", "ours", "--diversity", str(args.diversity)])
    for figure in ("final", "oracle"):
        run_module(["adapt.report", "--runs-dir", str(args.runs_dir), "--figure", figure])
    return 0


if __name__ == "__main__":
    run_cli(main)
