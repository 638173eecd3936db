"""``python -m adapt.train``: adapt a classifier from labelled source images to unlabelled target images (DCAN).

The network, losses and presets are :mod:`adapt.model`, :mod:`adapt.losses`
and :mod:`adapt.config`; the images :mod:`adapt.data`; model selection and
collapse detection :mod:`adapt.selection`; run folders and grids
:mod:`adapt.cells`. ``--alignment none,dcan,ours --seeds 0,1,2`` trains the
whole grid, one run folder per cell (``--prior-correction none,bbse,em``
multiplies it by the label-shift corrections of :mod:`adapt.label_shift`); the same command run again skips
finished cells and resumes interrupted ones. Every option is checked, the
data sets of every seed are opened and the cells already on disk are
compared with the settings asked for before any folder is created.

``--source synthetic`` reads ``--source-store`` (else ``--source-root``,
``$CXR_SYNTHETIC_ROOT``, or the store ``python -m synth.generate --version V
--setting S`` writes by default in the working folder).

Several processes: ``torchrun --standalone --nproc_per_node N -m adapt.train ...``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import replace

import torch

from adapt.cells import (
    adapt_cell,
    evaluation_record,
    finished_results,
    summary_line,
    write_results,
)
from datasets.registry import default_counts, names
from datasets.synthetic import DEFAULT_STORE, ENV_VAR
from evaluate.metrics import missing_classes_warning
from models.backbones import BACKBONES
from models.initialisation import imagenet_weights_file
from plumbing.cli import (
    add_device_arg,
    add_runs_dir_arg,
    check_options,
    check_output_folder,
    data_options,
    make_parser,
    parse_list,
    parse_seeds,
    resolve_device,
    run_cli,
    workers_for,
)
from plumbing.distributed import local_batch_size, on_every_process, print_on_main, processes
from plumbing.errors import UserError
from plumbing.grid import Cell, Status, cell_status, check_cells, run_here
from plumbing.launch import add_launcher_args, check_launcher_args, launch, only_cell
from plumbing.lookup import look_up
from plumbing.precision import add_amp_arg, use_bf16_autocast
from plumbing.run_folders import command_line, open_run, record_config, run_name_or
from plumbing.runtime import Runtime
from plumbing.storage import add_storage_option_arg, apply_storage_options
from plumbing.training import checkpoints

from .config import ALIGNMENTS, BN_MODES, PRIOR_CORRECTIONS, AdaptConfig, check_prior_correction, with_preset
from .data import adapt_data
from .model import build_model
from .trainer import train_adaptation

PROG = "python -m adapt.train"
DEFAULTS = AdaptConfig()
WEIGHT_OPTIONS = ("feature_mmd", "output_mmd", "regulariser", "entropy")


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = make_parser(PROG, "Adapt a classifier from labelled source images (a synthetic store or a real data "
                               "set) to unlabelled target images with domain-conditioned channel attention (DCAN).",
                         example="python -m adapt.train --source synthetic --target chexpert --alignment none,ours")
    data = parser.add_argument_group("data")
    data.add_argument("--source", default="synthetic", help=f"labelled source data set ({', '.join(names())})")
    data.add_argument("--source-store", default=None,
                      help="the synthetic store of --source synthetic (default: --source-root, $CXR_SYNTHETIC_ROOT, "
                           f"else ./{DEFAULT_STORE} as synth.generate writes it)")
    data.add_argument("--source-root", default=None, help="root of a real source (else its environment variable)")
    add_storage_option_arg(data)
    data.add_argument("--target", default="chexpert", help="unlabelled target data set (its labels only score)")
    data.add_argument("--target-root", default=None, help="root of the target (else its environment variable)")
    data.add_argument("--target-prior", default=d.target_prior,
                      help="class prior to resample a labelled target's adaptation and evaluation images to, as the "
                           "largest subset that follows it: natural (as they are) | balanced | P1,P2,... (one share "
                           "per class, in the task's order, summing to 1) | dirichlet:ALPHA (drawn per seed); to "
                           "measure how a method degrades under label shift")
    data.add_argument("--version", type=int, default=d.version, help="label-task version (data with findings)")
    data.add_argument("--setting", default=d.setting, help="label-task setting, 0s or Xs (data with findings)")
    data.add_argument("--source-length", type=int, default=None,
                      help=f"source images ({default_counts()} when not given)")
    data.add_argument("--target-length", type=int, default=None,
                      help=f"target adaptation images ({default_counts()} when not given)")
    data.add_argument("--eval-length", type=int, default=None,
                      help=f"target evaluation images ({default_counts(held_out=True)})")
    data.add_argument("--workers", type=int, default=None, help="DataLoader workers (none given: 0 on a CPU)")
    method = parser.add_argument_group("alignment")
    method.add_argument("--alignment", default="dcan",
                        help=f"comma-separated presets, one grid column each ({', '.join(ALIGNMENTS)}): none = source "
                             "only, dcan = every official term, ours = dcan without the correction regulariser")
    method.add_argument("--diversity", type=float, default=0.0,
                        help="weight of the entropy of the mean target prediction (against collapse; 0 = off)")
    for key in WEIGHT_OPTIONS:
        method.add_argument(f"--{key.replace('_', '-')}", type=float, default=None,
                            help=f"weight of the {key.replace('_', ' ')} term (none given: the preset's)")
    method.add_argument("--alpha", type=float, default=d.alpha, help="weight of the MMD and regulariser terms")
    method.add_argument("--prior-correction", default=d.prior_correction,
                        help=f"comma-separated label-shift corrections, one grid column each per preset "
                             f"({', '.join(PRIOR_CORRECTIONS)}): bbse | em weigh the source side of the MMD terms by "
                             "q(y) / p_s(y) and pull the diversity term towards q, the target prior estimated at each "
                             "evaluation by black-box shift estimation | EM on calibrated probabilities (cells "
                             "PRESET+bbse, PRESET+em); none = uncorrected. Both estimates are recorded either way")
    model = parser.add_argument_group("model")
    residual = sorted(n for n, s in BACKBONES.items() if s.residual)
    model.add_argument("--backbone", choices=residual, default=d.backbone, help="residual backbone")
    model.add_argument("--init", default="auto",
                       help="auto (imagenet when torchvision's weights are in torch hub's cache, else scratch) | "
                            "scratch | imagenet | PATH of a model file ({seed} in it: the cell's seed, a start per "
                            "seed) | ssl:RUN; DCAN from scratch tends to collapse")
    model.add_argument("--batchnorm", choices=BN_MODES, default=d.batchnorm,
                       help="frozen (official) | train | auto: frozen unless the backbone starts from scratch")
    model.add_argument("--image-size", type=int, default=d.image_size, help="square input size in pixels")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=d.steps, help="training steps")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="images per domain in a step (global)")
    opt.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate of the backbone (x10 classifier, "
                                                             "x0.01 correction blocks)")
    opt.add_argument("--momentum", type=float, default=d.momentum, help="SGD (Nesterov) momentum")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    opt.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between evaluations (checkpoints)")
    add_amp_arg(opt)
    run = parser.add_argument_group("run")
    run.add_argument("--seeds", default="0", help="comma-separated seeds, one grid row each")
    run.add_argument("--name", default=None, help="prefix of the cells' run folders (none given: adapt-SOURCE-TARGET)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runs_dir_arg(parser)
    add_device_arg(parser)
    add_launcher_args(parser)
    return parser


def _names(text: str, option: str, kind: str, known: tuple[str, ...]) -> list[str]:
    values = parse_list(text, option, what=f"{kind}s ({', '.join(known)})")
    for v in values:
        look_up(kind, v, known, option=option)
    return values


def _source_root(args: argparse.Namespace) -> str | None:
    if args.source != "synthetic":
        if args.source_store is not None:
            raise UserError("--source-store is for --source synthetic; use --source-root for other data sets")
        return args.source_root
    root = args.source_store or args.source_root or os.environ.get(ENV_VAR)
    if root is not None:
        return root
    default = DEFAULT_STORE.format(version=args.version, setting=args.setting)
    if not os.path.isdir(default):
        raise UserError(f"no synthetic store at ./{default}; make it with `python -m synth.generate --version "
                        f"{args.version} --setting {args.setting}` or pass --source-store PATH")
    return default


def _init(choice: str, backbone: str) -> str:
    if choice != "auto":
        return choice
    return "imagenet" if imagenet_weights_file(backbone).is_file() else "scratch"


def _weight(value: float) -> bool:
    """Whether ``value`` can weigh a loss term: finite and not negative (``inf`` or ``nan`` diverge at once)."""
    return math.isfinite(value) and value >= 0


def base_config(args: argparse.Namespace) -> AdaptConfig:
    """The configuration every cell shares (its alignment and seed are set per cell), checked."""
    check_options([
        (args.steps >= 1 and args.eval_every >= 1, "--steps and --eval-every must be at least 1"),
        (args.batch_size >= 2, "--batch-size must be at least 2 (the MMD estimator takes pairs)"),
        (16 <= args.image_size <= 1024, "--image-size must lie in [16, 1024]"),
        (0 < args.lr < float("inf"), "--lr must be a positive finite number"),
        (0 <= args.momentum < 1 and 0 <= args.weight_decay < float("inf"),
         "--momentum must lie in [0, 1) and --weight-decay be >= 0"),
        (all(_weight(v) for v in (args.diversity, args.alpha)), "--diversity and --alpha must be finite and >= 0"),
        (all(getattr(args, k) is None or _weight(getattr(args, k)) for k in WEIGHT_OPTIONS),
         f"the loss weights ({', '.join('--' + k.replace('_', '-') for k in WEIGHT_OPTIONS)}) must be finite "
         "and >= 0"),
        ((args.workers or 0) >= 0, "--workers must be >= 0"),
        (all(v is None or v >= 1 for v in (args.source_length, args.target_length, args.eval_length)),
         "--source-length, --target-length and --eval-length must be >= 1"),
    ])
    return AdaptConfig(
        source=args.source, source_root=_source_root(args), target=args.target, target_root=args.target_root,
        version=args.version, setting=args.setting, source_length=args.source_length,
        target_length=args.target_length, eval_length=args.eval_length, diversity=args.diversity, alpha=args.alpha,
        target_prior=args.target_prior,
        backbone=args.backbone, init=_init(args.init, args.backbone), batchnorm=args.batchnorm,
        image_size=args.image_size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, eval_every=args.eval_every,
    )


def grid(args: argparse.Namespace, base: AdaptConfig) -> list[Cell[AdaptConfig]]:
    """Every (alignment, prior correction, seed) cell, with the weights given on the command line over the
    presets'; a prior correction that changes no term of its preset is refused (:func:`check_prior_correction`)."""
    prefix = run_name_or(args.name, f"adapt-{base.source}-{base.target}")
    overrides = {k: getattr(args, k) for k in WEIGHT_OPTIONS if getattr(args, k) is not None}
    corrections = _names(args.prior_correction, "--prior-correction", "prior correction", PRIOR_CORRECTIONS)
    cells = []
    for alignment in _names(args.alignment, "--alignment", "alignment", ALIGNMENTS):
        for correction in corrections:
            for seed in parse_seeds(args.seeds):
                cfg = replace(with_preset(replace(base, seed=seed), alignment), **overrides,
                              prior_correction=correction)
                cells.append(adapt_cell(prefix, check_prior_correction(cfg), args.runs_dir))
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_storage_options(args.storage_option, [args.source_store, args.source_root])
    device = resolve_device(args.device)
    check_output_folder(args.runs_dir, "--runs-dir")
    check_launcher_args(args)
    base = base_config(args)
    cells = grid(args, base)
    if args.only_cell is not None:
        cells = only_cell(cells, args.only_cell)
    if args.launcher == "submitit":
        check_cells(cells)
        return launch(cells, args, "adapt.train", argv)
    source = "--source-store" if args.source == "synthetic" else "--source-root"
    roles = {"source": source, "train": source, "target": "--target-root", "evaluation": "--target-root"}
    with data_options(roles):
        return on_every_process(device, lambda here: _train(args, argv, cells, here))


def _train(args: argparse.Namespace, argv: Sequence[str] | None, cells: list[Cell[AdaptConfig]],
           device: torch.device) -> int:
    first = cells[0].work
    # Every check before any folder exists: data roots and classes, the batch split, --init, cells on disk.
    data = {seed: adapt_data(replace(first, seed=seed)) for seed in dict.fromkeys(c.work.seed for c in cells)}
    local_batch_size(first.batch_size)
    for seed, seed_data in data.items():  # --init of every seed ({seed} in a PATH)
        build_model(replace(first, seed=seed), seed_data.channels, len(seed_data.classes), args.runs_dir)
    for cell in cells:
        if cell_status(cell) == "finished":
            finished_results(cell)  # a damaged results.json is named, never taken as finished
    cells = check_cells(cells)
    if args.init == "auto":
        found = "found" if first.init == "imagenet" else "not found"
        print_on_main(f"--init auto: {first.init} (ImageNet weights {found} at "
                      f"{imagenet_weights_file(first.backbone)})")
    workers = workers_for(args.workers, device)
    runtime = Runtime(device, use_bf16_autocast(args.amp, device), workers, not args.no_progress, args.runs_dir)
    command = command_line(PROG, argv)
    sizes = ", ".join(f"{k} {v}" for k, v in data[first.seed].sizes().items())
    print_on_main(f"{first.source} -> {first.target} [{', '.join(data[first.seed].classes)}]; images: {sizes}; "
        f"{len(cells)} cell(s); {device} {processes()}".rstrip())

    def train_cell(cell: Cell[AdaptConfig], status: Status) -> None:
        """Start a new cell, resume a started one from its newest checkpoint; results and classifier at the end."""
        cfg, cell_data = cell.work, data[cell.work.seed]
        run = open_run(args.runs_dir, cell.name, resume=status == "started" and bool(checkpoints(cell.folder)))
        cell_sizes = ", ".join(f"{k} {v}" for k, v in cell_data.sizes().items())
        record = ({"adapt": cfg.to_dict(), "evaluation_data": evaluation_record(cfg),
                   "data_description": f"{cfg.source} -> {cfg.target} ({cell_sizes})"}
                  if run.checkpoint is None else run.checkpoint["run"]["config"])
        record = {k: v for k, v in record.items() if k != "init_provenance"}
        run.create()
        print_on_main(f"{cell.name}: {'resuming' if run.resumed else 'training'} {cfg.steps} steps -> {run.path}")
        with run.discarded_on_failure(f"{cell.name}: "):  # a diverged cell is retried from its last checkpoint
            record = record_config(run, record, command)
            trainer = train_adaptation(cfg, cell_data, runtime, run.path, record, run.checkpoint)
        results = write_results(run.path, cfg, trainer, cell_data)
        if (warning := missing_classes_warning(results, "target evaluation set")) is not None:
            print_on_main(warning)
        print_on_main(summary_line(results))

    run_here(cells, train_cell).raise_if_failed()
    return 0


if __name__ == "__main__":
    run_cli(main)
