"""``python -m evaluate.finetune``: the downstream protocol - train a classifier on a labelled task and score it.

The protocol itself (learning-rate selection, training, best epoch, scoring)
is :mod:`evaluate.protocol.training`, the images :mod:`evaluate.protocol.task_data`.
This command checks every option and builds the data sets before it creates
the run folder, then writes into it: ``config.json`` (configuration and
command), ``checkpoint_<it>.pt`` (every epoch), ``best.pt`` and
``classifier.safetensors`` (the best epoch by validation balanced accuracy),
``tb/`` and ``results.json`` (metrics on the evaluation set, the chosen
learning rate and every trial's score). ``--resume`` continues after the
last finished epoch with the run's own settings; an interrupted
learning-rate search starts again.

Several processes: ``torchrun --standalone --nproc_per_node N -m evaluate.finetune ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence

import torch

from datasets.registry import default_counts, get_spec, names
from evaluate.metrics import MISSING, missing_classes_warning
from evaluate.protocol.task_data import task_data
from evaluate.protocol.training import BALANCE, MODES, FinetuneConfig, build_classifier, run_protocol
from models.backbones import backbone_names
from plumbing.cli import (
    add_run_args,
    check_options,
    check_output_folder,
    data_options,
    make_parser,
    resolve_device,
    run_cli,
    workers_for,
)
from plumbing.distributed import local_batch_size, on_every_process, print_on_main, processes
from plumbing.lr_selection import parse_lr_grid
from plumbing.precision import add_amp_arg, use_bf16_autocast
from plumbing.run_folders import (
    RESULTS_FILE,
    command_line,
    given_options,
    open_run,
    record_config,
    refuse_changed_options,
    run_name_or,
)
from plumbing.runtime import Runtime

PROG = "python -m evaluate.finetune"
DEFAULTS = FinetuneConfig()
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(FinetuneConfig))


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = make_parser(PROG, "Train a classifier on a labelled task (fine-tune or linear probe) and score it on "
                               "held-out images.",
                         example="python -m evaluate.finetune --data phantom --backbone resnet18 --image-size 64")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=d.data, help=f"registered data set ({', '.join(names())})")
    data.add_argument("--data-root", default=None,
                      help="root of a real data set or the synthetic store (else its environment variable)")
    data.add_argument("--version", type=int, default=d.version, help="label-task version (data with findings)")
    data.add_argument("--setting", default=d.setting, help="label-task setting, 0s or Xs (data with findings)")
    data.add_argument("--length", type=int, default=None,
                      help=f"training images, a deterministic subset of a real data set (default: every image; "
                           f"{default_counts()})")
    data.add_argument("--eval-data", default=None,
                      help="data set of the evaluation images, with the same classes (none given: --data)")
    data.add_argument("--eval-root", default=None, help="root of --eval-data (else its environment variable)")
    data.add_argument("--eval-length", type=int, default=None,
                      help=f"evaluation images ({default_counts(held_out=True)} when not given)")
    data.add_argument("--augment", action="store_true", help="training augmentations (flips, small affine, intensity)")
    data.add_argument("--workers", type=int, default=None, help="DataLoader workers (none given: 0 on a CPU)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=backbone_names(), default=d.backbone, help="backbone architecture")
    model.add_argument("--init", default=d.init,
                       help="scratch | imagenet (torch hub cache) | PATH of a model file | ssl:RUN (a run's backbone)")
    model.add_argument("--mode", choices=MODES, default=d.mode,
                       help="finetune: train every weight; linear: a linear probe on the frozen backbone")
    model.add_argument("--image-size", type=int, default=d.image_size, help="square input size in pixels")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=d.epochs, help="epochs of the full run")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="global minibatch size")
    opt.add_argument("--lr", type=float, default=None, help="learning rate (none given: chosen from --lr-grid)")
    opt.add_argument("--lr-grid", default=",".join(f"{v:g}" for v in d.lr_grid),
                     help="learning rates tried, each for --lr-trial-epochs; the best by validation balanced "
                          "accuracy trains the full run")
    opt.add_argument("--lr-trial-epochs", type=int, default=d.lr_trial_epochs, help="epochs of each trial")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    opt.add_argument("--balance", choices=BALANCE, default=d.balance,
                     help="loss: class-balanced cross-entropy (inverse class frequencies); none: plain")
    add_amp_arg(opt)
    run = parser.add_argument_group("run")
    add_run_args(parser, run, name_help="run folder name (none given: finetune-<data>-<backbone>)",
                 resume_help="continue the run after its last finished epoch", seed=d.seed,
                 seed_help="seed of the initialisation, order and validation set")
    return parser


def _config(args: argparse.Namespace) -> FinetuneConfig:
    """The run's configuration from the options, checked (one :class:`UserError` line for a bad value)."""
    checks = [
        (args.epochs >= 1 and args.lr_trial_epochs >= 1, "--epochs and --lr-trial-epochs must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be positive"),
        (16 <= args.image_size <= 1024, "--image-size must lie in [16, 1024]"),
        (args.lr is None or 0 < args.lr < float("inf"), "--lr must be a positive finite number"),
        (0 <= args.weight_decay < float("inf"), "--weight-decay must be >= 0"),
        ((args.workers or 0) >= 0, "--workers must be >= 0"),
        (all(v is None or v >= 1 for v in (args.length, args.eval_length)), "--length and --eval-length must be >= 1"),
    ]
    check_options(checks)
    has_findings = get_spec(args.data).schema is not None
    eval_data = args.eval_data or args.data
    lengths = {"length": get_spec(args.data).image_count(args.length),
               "eval_length": get_spec(eval_data).image_count(args.eval_length, held_out=True)}
    return FinetuneConfig(
        data=args.data, data_root=args.data_root, version=args.version if has_findings else None,
        setting=args.setting if has_findings else None, eval_data=eval_data, eval_root=args.eval_root,
        backbone=args.backbone, init=args.init, mode=args.mode, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_grid=parse_lr_grid(args.lr_grid),
        lr_trial_epochs=args.lr_trial_epochs, weight_decay=args.weight_decay, balance=args.balance,
        augment=args.augment, seed=args.seed, **lengths,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    check_output_folder(args.runs_dir, "--runs-dir")
    cfg = _config(args)
    own_eval_root = args.eval_root is not None or cfg.eval_data != cfg.data  # else the evaluation reads --data-root
    roles = {"train": "--data-root", "evaluation": "--eval-root" if own_eval_root else "--data-root",
             "evaluation_data": "--eval-data"}
    with data_options(roles):
        return on_every_process(device, lambda here: _finetune(parser, argv, args, cfg, here))


def _finetune(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace, cfg: FinetuneConfig,
    device: torch.device,
) -> int:
    run = open_run(args.runs_dir, run_name_or(args.name, f"finetune-{cfg.data}-{cfg.backbone}"), args.resume)
    if run.checkpoint is not None:
        record = run.checkpoint["run"]["config"]
        saved = FinetuneConfig.from_dict(record["finetune"])
        refuse_changed_options(given_options(parser, argv) & set(RUN_OPTIONS), cfg.to_dict(), saved.to_dict())
        cfg, record = saved, {k: v for k, v in record.items() if k != "init_provenance"}
    else:
        record = {"finetune": cfg.to_dict()}
    data = task_data(*cfg.data_choices(), cfg.image_size, cfg.seed)
    record["data_description"] = (
        f"{cfg.data} {data.classes} train split ({len(data.train)} images)"
        + (f", task v{cfg.version}-{cfg.setting}" if cfg.version is not None else "")
    )
    local_batch_size(cfg.batch_size)  # a global batch the processes cannot share stops here
    build_classifier(cfg, data.channels, len(data.classes), args.runs_dir)  # and so does a bad --init
    workers = workers_for(args.workers, device)
    runtime = Runtime(device, use_bf16_autocast(args.amp, device), workers, not args.no_progress, args.runs_dir)
    run.create()  # every check has passed
    with run.discarded_on_failure():  # a fresh start that wrote no checkpoint leaves no folder
        record = record_config(run, record, command_line(PROG, argv))
        sizes = ", ".join(f"{k} {v}" for k, v in data.sizes().items())
        print_on_main(f"{run.path.name}: {cfg.backbone} ({cfg.init}, {cfg.mode}) on {cfg.data} "
                      f"[{', '.join(data.classes)}]; images: {sizes}; {device} {processes()}".rstrip())
        results = run_protocol(cfg, data, runtime, run, record)
    if (warning := missing_classes_warning(results)) is not None:
        print_on_main(warning)
    summary = {k: results[k] for k in ("balanced_accuracy", "auroc")} | {"lr": results["lr"]["lr"]}
    summary |= {MISSING: results[MISSING]} if MISSING in results else {}
    print_on_main(json.dumps(summary))
    print_on_main(f"results: {run.path / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    run_cli(main)
