"""``python -m synth.train``: train the conditional GAN on a registered data set.

The trainer itself (losses, schedule, what one iteration does, the training
loop) is :mod:`synth.trainer` and its configuration :mod:`synth.config`; this
command checks the options - all of them, and builds the data set, before it
creates anything - starts or resumes the run folder through
:mod:`plumbing.run_folders` and calls :func:`synth.trainer.train`. A resume continues
exactly where the run stopped.

Every ``--snapshot-kimg`` the run folder receives an atomic checkpoint, a
sample grid (fixed latents, one row per condition) and
``generator.safetensors`` (the EMA generator, what ``synth.generate`` reads).
A resume takes every run-defining setting from the checkpoint; options given
on the resuming command that contradict it are refused.

Several processes: ``torchrun --standalone --nproc_per_node N -m synth.train ...``
(gloo on CPUs, NCCL on GPUs, one GPU per process); ``--batch-size`` stays the
global batch, and a run may be resumed with another number of processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from datasets.cache import CachedDataset
from datasets.registry import names
from plumbing.cli import (
    add_run_args,
    check_options,
    check_output_folder,
    make_parser,
    resolve_device,
    run_cli,
    workers_for,
)
from plumbing.distributed import is_main_process, on_every_process, print_on_main, processes
from plumbing.errors import UserError
from plumbing.precision import add_amp_arg, use_bf16_autocast
from plumbing.run_folders import (
    command_line,
    given_options,
    open_run,
    record_config,
    refuse_changed_options,
    run_name_or,
)
from plumbing.training import restore
from synth.network_config import PRESETS, RESOLUTIONS

from .conditions import condition_vectors
from .config import SavedRun, TrainingConfig, saved_run
from .fidelity_probe import FidelityProbe
from .trainer import GanTrainer, iterations, network_config, train, training_dataset, training_spec

PROG = "python -m synth.train"
DEFAULTS = TrainingConfig()
NETWORK_OPTIONS = ("preset", "channel_base", "channel_max")
"""Options that shape the networks (compared with the checkpoint's network on a resume)."""
FROM_COMMAND = "--kimg, --workers, --device, --amp, --data-root and --no-progress"
"""What a resume takes from its own command line rather than from the checkpoint."""


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = make_parser(PROG, "Train the class-conditional StyleGAN2-ADA-style GAN on a data set.",
                         example="python -m synth.train --data phantom --resolution 64 --kimg 150")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=d.data, help=f"registered data set with finding vectors ({', '.join(names())})")
    data.add_argument("--data-root", default=None, help="root of a real data set (else its environment variable)")
    data.add_argument("--data-length", type=int, default=None,
                      help="number of images: phantom data set size, or a deterministic subset of a real one")
    data.add_argument("--workers", type=int, default=None,
                      help="DataLoader worker processes (none given: 0 on a CPU, which trains on every core; "
                           "min(8, CPUs - 1) with a GPU)")
    data.add_argument("--balance-task", default=None, metavar="VERSION-SETTING",
                      help="train on the members of this label task's classes only (e.g. 3-0s), each class drawn "
                           "equally often (none given: every image, uniformly)")
    data.add_argument("--cache", action="store_true",
                      help="read the whole data set into memory once (uint8) before training; "
                           "worth it for phantoms, which are costly to draw")
    net = parser.add_argument_group("networks")
    net.add_argument("--resolution", type=int, default=d.resolution, help="target resolution")
    net.add_argument("--start-resolution", type=int, default=None,
                     help="progressive growing from this resolution (none given: fixed resolution)")
    net.add_argument("--fade-kimg", type=float, default=d.fade_kimg, help="kimg of fade-in per new resolution")
    net.add_argument("--stable-kimg", type=float, default=d.stable_kimg,
                     help="kimg at each resolution before the next fades in")
    net.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                     help="network widths: tiny (CPU) or paper (StyleGAN2-ADA paper256)")
    net.add_argument("--channel-base", type=int, default=None, help="override the preset's channel_base")
    net.add_argument("--channel-max", type=int, default=None, help="override the preset's channel_max")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--kimg", type=float, default=d.kimg, help="training length in thousands of real images shown")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size")
    opt.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate of G and D")
    opt.add_argument("--gamma", type=float, default=None,
                     help="R1 weight (none given: 0.0002 * resolution^2 / batch, as StyleGAN2-ADA 'auto')")
    opt.add_argument("--r1-interval", type=int, default=d.r1_interval, help="lazy R1 every this many D steps")
    opt.add_argument("--pl-weight", type=float, default=d.pl_weight,
                     help="path-length regularisation weight (0 = off; StyleGAN2 uses 2)")
    opt.add_argument("--ac-weight", type=float, default=d.ac_weight,
                     help="weight of the auxiliary classifier (AC-GAN) loss on the condition values, for D on "
                          "reals and for G on fakes (0 = off)")
    opt.add_argument("--mixing", type=float, default=d.mixing, help="style-mixing probability")
    opt.add_argument("--ema-kimg", type=float, default=None, help="EMA half-life in kimg (none given: batch * 10 / 32)")
    opt.add_argument("--no-ada", action="store_true", help="disable adaptive discriminator augmentation")
    opt.add_argument("--ada-target", type=float, default=d.ada_target, help="ADA target of E[sign D(real)]")
    opt.add_argument("--ada-kimg", type=float, default=d.ada_kimg,
                     help="kimg for the ADA probability to move from 0 to 1")
    add_amp_arg(opt)
    probe = parser.add_argument_group("label fidelity while training")
    probe.add_argument("--fidelity-classifier", type=Path, default=None,
                       help="classifier file (evaluate.finetune / evaluate.synthetic, trained on phantoms or the "
                            "reference) that scores the EMA generator's images of every class at each snapshot, into "
                            "TensorBoard (fidelity/<class>), samples/label_fidelity.jsonl and the sample grids")
    probe.add_argument("--fidelity-task", default=None, metavar="VERSION-SETTING",
                       help="label task of the probe's conditions (none given: the 0s task of the classifier's "
                            "classes)")
    probe.add_argument("--fidelity-images", type=int, default=32, help="probe images per class")
    run = parser.add_argument_group("run")
    run.add_argument("--snapshot-kimg", type=float, default=d.snapshot_kimg,
                     help="checkpoint, sample grid and generator export every this many kimg")
    add_run_args(parser, run, name_help="run folder name (none given: gan-<data>-<resolution>)",
                 resume_help="continue the run in the run folder from its newest readable checkpoint", seed=d.seed,
                 seed_help="random seed")
    return parser


def _validate(args: argparse.Namespace) -> None:
    """One-line errors for option values the trainer cannot use."""
    finite = all(math.isfinite(v) for v in (args.kimg, args.snapshot_kimg, args.lr, args.fade_kimg, args.stable_kimg,
                                            args.mixing, args.ada_target, args.ada_kimg, args.pl_weight,
                                            args.ac_weight)
                 if v is not None) and all(v is None or math.isfinite(v) for v in (args.gamma, args.ema_kimg))
    checks = [
        (finite, "--kimg, --snapshot-kimg and the other numeric options must be finite numbers"),
        (args.resolution in RESOLUTIONS, f"--resolution must be one of {RESOLUTIONS}"),
        (args.start_resolution is None or 4 <= args.start_resolution <= args.resolution,
         "--start-resolution must be at least 4 and at most --resolution"),
        (args.batch_size >= 1 and args.kimg > 0 and args.snapshot_kimg > 0,
         "--batch-size, --kimg and --snapshot-kimg must be positive"),
        (args.lr > 0, "--lr must be positive"),
        ((args.workers or 0) >= 0 and args.r1_interval >= 0, "--workers and --r1-interval must be >= 0"),
        (args.fade_kimg > 0 and args.stable_kimg >= 0, "--fade-kimg must be positive and --stable-kimg >= 0"),
        (args.gamma is None or args.gamma >= 0, "--gamma must be >= 0"),
        (args.pl_weight >= 0 and args.ac_weight >= 0, "--pl-weight and --ac-weight must be >= 0"),
        (0.0 <= args.mixing <= 1.0, "--mixing must lie in [0, 1]"),
        (args.ema_kimg is None or args.ema_kimg > 0, "--ema-kimg must be positive"),
        (-1.0 <= args.ada_target <= 1.0 and args.ada_kimg > 0,
         "--ada-target must lie in [-1, 1] and --ada-kimg be positive"),
        (args.data_length is None or args.data_length >= 1, "--data-length must be positive"),
        (args.fidelity_images >= 1, "--fidelity-images must be positive"),
    ]
    check_options(checks)


def _requested(args: argparse.Namespace) -> TrainingConfig:
    """The training configuration this command's options describe (automatic values filled in)."""
    fields = TrainingConfig.__dataclass_fields__
    return TrainingConfig.resolve(**{k: getattr(args, k) for k in fields})


def _refuse_changes(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace, saved: SavedRun
) -> None:
    """Refuse run-defining options given on a resume whose value differs from the checkpoint's."""
    given = given_options(parser, argv) - {"kimg"}
    refuse_changed_options(given, _requested(args).to_dict(), saved.training.to_dict())
    network = saved.network
    asked = network_config(
        args.preset, network.resolution, network.c_dim, network.img_channels, args.channel_base, args.channel_max
    )
    if given & set(NETWORK_OPTIONS) and asked != network:
        raise UserError("--resume keeps the run's networks; the --preset / --channel-base / --channel-max "
                        "given differ from them")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    _validate(args)
    check_output_folder(args.runs_dir, "--runs-dir")
    return on_every_process(device, lambda here: _train(parser, argv, args, here))


def _train(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace, device: torch.device
) -> int:
    """Start or resume the run (every process; rank 0 writes)."""
    main_process = is_main_process()
    run = open_run(args.runs_dir, run_name_or(args.name, f"gan-{args.data}-{args.resolution}"), args.resume)
    if run.checkpoint is not None:
        saved = saved_run(run.checkpoint, run.checkpoint_path)
        _refuse_changes(parser, argv, args, saved)
        record, cfg, network = saved.record, dataclasses.replace(saved.training, kimg=args.kimg), saved.network
        print_on_main(f"resuming {run.checkpoint_path}: the run's saved settings apply; {FROM_COMMAND} come from "
                      f"this command (--kimg {args.kimg})")
    else:
        record, cfg = None, _requested(args)
    schedule = cfg.schedule()
    spec = training_spec(cfg.data)
    dataset = training_dataset(cfg, args.data_root)
    if record is None:
        network = network_config(
            args.preset, cfg.resolution, len(spec.schema.columns), spec.channels, args.channel_base, args.channel_max
        )
    trainer = GanTrainer(cfg, network, spec.schema, device, use_bf16_autocast(args.amp, device))
    if args.fidelity_classifier is not None:
        trainer.probe = FidelityProbe(args.fidelity_classifier, spec.schema, condition_vectors(spec.schema.name),
                                      task=args.fidelity_task, per_class=args.fidelity_images, seed=cfg.seed,
                                      device=device)
    if run.checkpoint is not None:
        restore(trainer.objects(), run.checkpoint, run.checkpoint_path)
    else:
        record = {
            "network": network.to_dict(), "condition_columns": list(spec.schema.columns),
            "augment": trainer.augment.spec.to_dict(),
        }
    start, (total, _) = trainer.state.iteration, iterations(cfg)
    if start >= total:
        raise UserError(f"the run already trained {start * cfg.batch_size / 1000:.2f} kimg; "
                        "pass a larger --kimg to continue")
    if cfg.cache:
        dataset = CachedDataset(dataset, progress=main_process and not args.no_progress)

    run.create()  # every check has passed
    try:
        trainer.state.config = record_config(run, record | {"training": cfg.to_dict()}, command_line(PROG, argv))
        print_on_main(f"training {run.path.name}: {total - start} iterations of {cfg.batch_size} images at "
                      f"{network.resolution} px (now {schedule.state(start * cfg.batch_size)[0]} px) on {device} "
                      f"{processes()}-> {run.path}")
        workers = workers_for(args.workers, device)
        train(trainer, dataset, run.path, workers=workers, progress=not args.no_progress)
    except BaseException:
        run.discard()  # a fresh start that wrote no checkpoint leaves no folder
        raise
    return 0


if __name__ == "__main__":
    run_cli(main)
