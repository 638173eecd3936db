"""Evidence on phantoms: scratch, each single pretext task and the two-task curriculum orderings over seeds.

    python -m bench.ssl_phantom --runs-dir runs/ssl-phantom --device cpu

1. ``python -m ssl.curriculum run --tasks none``: the scratch baseline (the
   downstream training alone) for every seed.
2. ``python -m ssl.curriculum run --tasks TASKS --orderings curriculum
   --max-length 2``: every single task for every seed, then the two-task
   orderings that the singles' mean downstream accuracies label Curriculum
   (each first task's step is reused, not trained again).
3. ``python -m ssl.curriculum runs``: the table, mean +- std over seeds.

The downstream task is phantom v3-0s at ``--image-size`` pixels, trained
from each run's backbone with one AdamW learning rate (``--downstream-lr``,
no trial). The defaults fit about an hour on 2 CPU cores.
Every pretext step picks its SGD learning rate from ``--lr-grid`` by
one-epoch trials. A finished run is skipped, so the benchmark resumes where
it stopped.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from plumbing.cli import make_parser, run_cli

from .run_module import run_module

PROG = "python -m bench.ssl_phantom"
TASKS = "relloc,rotation,moco,swav,odc"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Curricular SSL on phantoms: scratch, single tasks, two-task curricula over seeds.")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ssl-phantom"), help="folder of every run")
    parser.add_argument("--tasks", default=TASKS, help="pretext tasks")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--backbone", default="resnet18", help="backbone architecture")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--max-images", type=int, default=512, help="unlabelled phantom images of the pretext steps")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every pretext step")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch of the pretext steps")
    parser.add_argument("--lr-grid", default="0.01,0.05", help="SGD learning rates tried per pretext step")
    parser.add_argument("--length", type=int, default=1000, help="downstream training images")
    parser.add_argument("--eval-length", type=int, default=500, help="downstream evaluation images")
    parser.add_argument("--downstream-epochs", type=int, default=3, help="downstream epochs")
    parser.add_argument("--downstream-lr", default="3e-4", help="downstream AdamW learning rate(s)")
    parser.add_argument("--device", default="cpu", help="torch device")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common = ["ssl.curriculum", "run", "--data", "phantom", "--max-images", str(args.max_images),
              "--downstream", "phantom", "--version", "3", "--setting", "0s", "--length", str(args.length),
              "--eval-length", str(args.eval_length), "--backbone", args.backbone, "--image-size",
              str(args.image_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--lr-grid", args.lr_grid, "--downstream-epochs", str(args.downstream_epochs),
              "--downstream-lr-grid", args.downstream_lr, "--seeds", args.seeds, "--runs-dir", str(args.runs_dir),
              "--device", args.device, "--no-progress"]
    run_module([*common, "--tasks", "none"])
    run_module([*common, "--tasks", args.tasks, "--orderings", "curriculum", "--max-length", "2"])
    run_module(["ssl.curriculum", "runs", "--runs-dir", str(args.runs_dir)])
    return 0


if __name__ == "__main__":
    run_cli(main)
