"""``python -m ssl.curriculum run | runs``: curricular self-supervised pre-training and its runs table.

``run`` trains the pretext tasks of ``--tasks`` one after another on the
unlabelled images of ``--data`` (each step from the previous step's
backbone, its learning rate chosen by short trials, each watched by the
k-NN monitor of :mod:`ssl.monitor`), then the downstream
protocol of :mod:`evaluate.finetune` on ``--downstream``, and records a run
folder (:mod:`ssl.curriculum_run`). Finished steps are shared between runs through
their keys (:mod:`ssl.step_store`), so orderings with a common prefix train it
once. ``--orderings all`` runs every ordering of 1 to ``--max-length`` of the
tasks, ``curriculum`` the single tasks and then the orderings the runs table
labels Curriculum; the single-task runs of the tasks are recorded too
(their accuracies label the orderings). Several seeds with ``--seeds``.
Running the same command again skips finished runs and resumes an
interrupted one.

``runs`` prints the runs table (:mod:`ssl.table`); ``--plan`` the proposed
orderings instead.

Several processes: ``torchrun --standalone --nproc_per_node N -m ssl.curriculum run ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import torch

from datasets.registry import default_counts, get_spec, names
from evaluate.protocol.task_data import task_data
from evaluate.protocol.training import MODES, FinetuneConfig
from models.backbones import backbone_names
from models.initialisation import imagenet_weights_file
from models.model_file import BACKBONE_FILE
from plumbing.cli import (
    DefaultsHelpFormatter,
    add_device_arg,
    add_runs_dir_arg,
    check_options,
    check_output_folder,
    data_options,
    example_epilog,
    make_parser,
    parse_list,
    parse_seeds,
    resolve_device,
    run_cli,
    workers_for,
)
from plumbing.distributed import local_batch_size, on_every_process, print_on_main
from plumbing.errors import UserError
from plumbing.grid import Cell, check_cells, run_here
from plumbing.launch import add_launcher_args, check_launcher_args, launch, only_cell
from plumbing.lookup import unknown_name
from plumbing.lr_selection import parse_lr_grid
from plumbing.precision import add_amp_arg, use_bf16_autocast
from plumbing.run_folders import check_run_name, command_line
from plumbing.runtime import Runtime
from plumbing.storage import add_storage_option_arg, apply_storage_options
from ssl.curriculum_run import CurriculumRunner, curriculum_cells, read_results, run_name
from ssl.monitor import MONITOR_IMAGES, Monitor, MonitorConfig

from .config import CurriculumConfig
from .data import parse_data, unlabelled_images
from .table import FIGURES, config_group, plan, read_runs, render, settings_group, table
from .tasks import get_task, overrides_record, task_names, task_settings

PROG = "python -m ssl.curriculum"
NONE = "none"
MONITOR_DOWNSTREAM = "downstream"
ORDERINGS = ("given", "all", "curriculum")
FORMATS = ("markdown", "csv", "json")
STEP_LR_GRID = "0.01,0.03,0.1"
DOWNSTREAM = FinetuneConfig()


RUN_EXAMPLE = "python -m ssl.curriculum run --tasks rotation,moco --data phantom --downstream phantom"


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train curricula and their downstream classifiers",
                       description="Train the pretext tasks in order, then the downstream classifier; record a run.",
                       epilog=example_epilog(RUN_EXAMPLE, "pretext tasks:\n" + "\n".join(
                           f"  {n:<9} {get_task(n).description}" for n in task_names())),
                       formatter_class=DefaultsHelpFormatter)
    tasks = p.add_argument_group("curriculum")
    tasks.add_argument("--tasks", required=True,
                       help=f"comma-separated pretext tasks in order ({', '.join(task_names())}), or {NONE} "
                            "(the downstream training alone: the scratch or ImageNet baseline)")
    tasks.add_argument("--orderings", choices=ORDERINGS, default="given",
                       help="given: the ordering of --tasks; all: every ordering of 1 to --max-length of them; "
                            "curriculum: the single tasks, then the orderings labelled Curriculum by their results")
    tasks.add_argument("--max-length", type=int, default=None, help="longest ordering (default: all the tasks)")
    _add_label_by_arg(tasks)
    tasks.add_argument("--no-singles", action="store_true",
                       help="do not record the single-task runs of the tasks (their accuracies label orderings)")
    tasks.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                       help="a task setting, e.g. moco.queue_length=4096 (repeatable; default: the task's own)")
    tasks.add_argument("--init", choices=("scratch", "imagenet"), default="scratch",
                       help="the backbone the first step starts from (imagenet: torchvision's weights on disk)")
    data = p.add_argument_group("unlabelled images")
    data.add_argument("--data", default="phantom",
                      help=f"NAME or NAME=ROOT, comma-separated ({', '.join(names())}); labels are not used")
    data.add_argument("--max-images", type=int, default=None,
                      help="at most this many images, a seeded subset (default: every image of --data)")
    add_storage_option_arg(data)
    data.add_argument("--workers", type=int, default=None, help="DataLoader workers (none given: 0 on a CPU)")
    model = p.add_argument_group("backbone and pretext steps")
    model.add_argument("--backbone", choices=backbone_names(), default="resnet50", help="backbone architecture")
    model.add_argument("--image-size", type=int, default=224, help="square input size in pixels")
    model.add_argument("--epochs", type=int, default=20, help="epochs of every step (and downstream, unless given)")
    model.add_argument("--batch-size", type=int, default=64, help="global minibatch size")
    model.add_argument("--lr", type=float, default=None, help="SGD learning rate of every step (none: chosen)")
    model.add_argument("--lr-grid", default=STEP_LR_GRID,
                       help="learning rates tried per step, each for --lr-trial-epochs; the monitor's highest k-NN "
                            "wins (without a monitor the lowest loss)")
    model.add_argument("--lr-trial-epochs", type=int, default=1, help="epochs of each learning-rate trial")
    model.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    model.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    add_amp_arg(model)
    down = p.add_argument_group("downstream")
    down.add_argument("--downstream", default="phantom", help=f"labelled data set ({', '.join(names())})")
    down.add_argument("--downstream-root", default=None, help="its root (else its environment variable)")
    down.add_argument("--version", type=int, default=DOWNSTREAM.version, help="label-task version")
    down.add_argument("--setting", default=DOWNSTREAM.setting, help="label-task setting, 0s or Xs")
    down.add_argument("--downstream-eval", default=None,
                      help="data set of the downstream evaluation images, with the same classes (none given: "
                           "--downstream; needed for --downstream synthetic, whose val split validates)")
    down.add_argument("--downstream-eval-root", default=None,
                      help="root of --downstream-eval (else its environment variable)")
    down.add_argument("--length", type=int, default=None,
                      help=f"downstream training images ({default_counts()} when not given)")
    down.add_argument("--eval-length", type=int, default=None,
                      help=f"downstream evaluation images ({default_counts(held_out=True)} when not given)")
    down.add_argument("--downstream-image-size", type=int, default=None,
                      help="input size of the downstream runs and their probes (none given: --image-size); the "
                           "backbone pools globally, so pretext steps at a small size can serve a larger one")
    down.add_argument("--mode", choices=MODES, default=DOWNSTREAM.mode, help="fine-tune or linear probe")
    watch = p.add_argument_group("monitor (k-NN of every step's backbone after every epoch; it chooses the rate)")
    watch.add_argument("--monitor", default=MONITOR_DOWNSTREAM,
                       help=f"labelled data set whose training images give the k-NN bank and queries (two "
                            f"class-balanced halves; {MONITOR_DOWNSTREAM}: the downstream task's; {NONE}: no "
                            "monitor, the rate by the lowest loss)")
    watch.add_argument("--monitor-root", default=None, help="its root (else its environment variable)")
    watch.add_argument("--monitor-images", type=int, default=MONITOR_IMAGES,
                       help="bank and query images of the monitor, each at most")
    down.add_argument("--downstream-epochs", type=int, default=None, help="epochs (none given: --epochs)")
    down.add_argument("--downstream-lr-grid", default=",".join(f"{v:g}" for v in DOWNSTREAM.lr_grid),
                      help="AdamW learning rates tried; the best validation balanced accuracy wins")
    run = p.add_argument_group("runs")
    run.add_argument("--seeds", default="0", help="comma-separated seeds, one run per ordering and seed")
    run.add_argument("--prefix", default="ssl", help="run folder names: PREFIX-DOWNSTREAM-ORDERING-seedS")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_runs_dir_arg(p)
    add_device_arg(p)
    add_launcher_args(p)


def _add_runs_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="print the runs table (or --plan)",
                       description="The curriculum runs per downstream task, best first; or the proposed orderings.",
                       epilog=example_epilog("python -m ssl.curriculum runs --runs-dir runs --label-by knn"),
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--format", choices=FORMATS, default="markdown", help="output format")
    p.add_argument("--plan", action="store_true",
                   help="propose orderings from the single-task results instead: label, ordering, settings group")
    p.add_argument("--tasks", default=None, help="tasks of the plan (default: those with single-task runs)")
    p.add_argument("--max-length", type=int, default=2, help="longest ordering of the plan")
    _add_label_by_arg(p)
    add_runs_dir_arg(p)


def _add_label_by_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--label-by", choices=FIGURES, default="finetune",
                        help="the downstream figure whose single-task means label orderings C / AC / MC (and give "
                             "delta and the baseline columns): fine-tune, k-NN or linear probe balanced accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Curricular self-supervised pre-training: run curricula, print their table.",
                         example=RUN_EXAMPLE)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,runs}")
    _add_run_parser(sub)
    _add_runs_parser(sub)
    return parser


def _overrides(items: Sequence[str], tasks: Sequence[str]) -> dict[str, dict[str, str]]:
    """``--set moco.queue_length=4096`` as ``{"moco": {"queue_length": "4096"}}``, checked against the tasks."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, dot, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not dot or not eq or not key:
            raise UserError(f"--set {item!r} must read TASK.KEY=VALUE, e.g. moco.queue_length=4096")
        if name not in tasks:
            raise UserError(f"--set {item!r}: {name} is not one of --tasks ({', '.join(tasks)})")
        out.setdefault(name, {})[key] = value
    for name, values in out.items():
        task_settings(name, values)  # an unknown key or a value of the wrong type stops here
    return out


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(parse_list(text, "--tasks", what=f"pretext task names (or {NONE})"))
    if tasks == (NONE,):
        return ()
    for t in tasks:
        if t not in task_names():
            raise UserError(f"--tasks: {unknown_name('pretext task', t, [*task_names(), NONE])}")
    return tasks


def orderings(tasks: tuple[str, ...], how: str, max_length: int, singles: bool,
              labels: dict[tuple[str, ...], str] | None = None) -> list[tuple[str, ...]]:
    """The orderings to run, shortest first (prefixes train before the orderings that reuse them)."""
    if how == "given":
        wanted = [(t,) for t in tasks] if singles and len(tasks) > 1 else []
        return wanted + [tasks]
    chosen = [o for n in range(1, max_length + 1) for o in itertools.permutations(tasks, n)]
    if how == "curriculum":
        chosen = [o for o in chosen if len(o) == 1 or (labels or {}).get(o) == "C"]
    return chosen


def _check_run_options(args: argparse.Namespace) -> None:
    check_options([
        (args.epochs >= 1 and args.lr_trial_epochs >= 1, "--epochs and --lr-trial-epochs must be at least 1"),
        (args.downstream_epochs is None or args.downstream_epochs >= 1, "--downstream-epochs must be at least 1"),
        (args.batch_size >= 2, "--batch-size must be at least 2"),
        (16 <= args.image_size <= 1024, "--image-size must lie in [16, 1024]"),
        (args.downstream_image_size is None or 16 <= args.downstream_image_size <= 1024,
         "--downstream-image-size must lie in [16, 1024]"),
        (args.lr is None or 0 < args.lr < float("inf"), "--lr must be a positive finite number"),
        (args.weight_decay >= 0 and 0 <= args.momentum < 1, "--weight-decay must be >= 0, --momentum in [0, 1)"),
        (args.max_images is None or args.max_images >= args.batch_size,
         "--max-images must be at least one batch (--batch-size)"),
        ((args.workers or 0) >= 0, "--workers must be >= 0"),
        (args.max_length is None or args.max_length >= 1, "--max-length must be at least 1"),
        ((args.length is None or args.length >= 1) and (args.eval_length is None or args.eval_length >= 1),
         "--length and --eval-length must be at least 1"),
        (args.monitor_images >= 2, "--monitor-images must be at least 2"),
    ])
    if args.monitor not in (MONITOR_DOWNSTREAM, NONE):
        get_spec(args.monitor, option="--monitor")
    get_spec(args.downstream, option="--downstream")
    if args.downstream_eval is not None:
        get_spec(args.downstream_eval, option="--downstream-eval")


def _wanted(args: argparse.Namespace, singles_only: bool = False) -> list[tuple[str, ...]]:
    """The orderings of ``run``; for ``--orderings curriculum`` the singles, then (later) the labelled ones."""
    tasks = _tasks(args.tasks)
    if not tasks:
        return [()]
    max_length = args.max_length or max(1, len(tasks))
    if args.orderings != "curriculum":
        return orderings(tasks, args.orderings, max_length, not args.no_singles)
    if singles_only:
        return [(t,) for t in tasks]
    probe = _configs(args, [tasks])[0][1]  # the settings group and start of this invocation's runs
    group = config_group(probe)
    runs = [r for r in read_runs(args.runs_dir) if settings_group(r) == group]
    found = plan(runs, tasks, max_length, probe.init, probe.overrides, args.label_by)
    return orderings(tasks, "curriculum", max_length, True, {tuple(o.split(",")): label for o, label in found})


def _configs(args: argparse.Namespace, wanted: list[tuple[str, ...]]) -> list[tuple[str, CurriculumConfig]]:
    """The run name and configuration of every ordering of ``wanted`` and seed, every option checked first."""
    _check_run_options(args)
    tasks = _tasks(args.tasks)
    overrides = _overrides(args.set, tasks)
    data = tuple(s.describe() for s in parse_data(args.data))
    spec = get_spec(args.downstream)
    findings = spec.schema is not None
    eval_data = args.downstream_eval or args.downstream
    lr_grid = parse_lr_grid(args.downstream_lr_grid, "--downstream-lr-grid")
    prefix = check_run_name(args.prefix, "--prefix")
    base = dict(data=data, max_images=args.max_images, init=args.init, backbone=args.backbone,
                image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                lr_grid=parse_lr_grid(args.lr_grid), lr_trial_epochs=args.lr_trial_epochs,
                weight_decay=args.weight_decay, momentum=args.momentum)
    monitor = _monitor(args)
    configs = []
    for seed in parse_seeds(args.seeds):
        for order in wanted:
            downstream = FinetuneConfig(
                data=args.downstream, data_root=args.downstream_root, version=args.version if findings else None,
                setting=args.setting if findings else None,
                length=spec.image_count(args.length), eval_data=eval_data, eval_root=args.downstream_eval_root,
                eval_length=get_spec(eval_data).image_count(args.eval_length, held_out=True),
                backbone=args.backbone, init="scratch", mode=args.mode,
                image_size=args.downstream_image_size or args.image_size,
                epochs=args.downstream_epochs or args.epochs, batch_size=args.batch_size,
                lr_grid=lr_grid, lr_trial_epochs=args.lr_trial_epochs, seed=seed,
            )
            recorded = {t: overrides_record(t, overrides[t]) for t in order if t in overrides}
            cfg = CurriculumConfig(tasks=order, seed=seed, downstream=downstream, overrides=recorded,
                                   monitor=None if monitor is None else monitor.to_dict(), **base)
            name = check_run_name(run_name(cfg, prefix), "--prefix")
            start = str(args.runs_dir / name / BACKBONE_FILE)  # the run's own backbone file
            configs.append((name, dataclasses.replace(cfg, downstream=dataclasses.replace(downstream, init=start))))
    return configs


def _monitor(args: argparse.Namespace) -> MonitorConfig | None:
    """The monitor of ``--monitor`` (the downstream task's images by default; ``None`` for ``none``)."""
    if args.monitor == NONE:
        return None
    name, root = (args.downstream, args.downstream_root) if args.monitor == MONITOR_DOWNSTREAM else (
        args.monitor, args.monitor_root)
    findings = get_spec(name).schema is not None
    return MonitorConfig(name, root, args.version if findings else None, args.setting if findings else None,
                         args.monitor_images)


def _check_channels(option: str, name: str, channels: int) -> None:
    """One :class:`UserError` line when the data set ``name`` of ``option`` has other channels than the pretext
    images."""
    if get_spec(name).channels != channels:
        raise UserError(f"{option} {name} has {get_spec(name).channels}-channel images, the pretext images "
                        f"{channels}-channel ones; one backbone cannot take both")


def _check_start_and_downstream(cfg: CurriculumConfig, channels: int) -> None:
    """Before any training: ImageNet weights on disk when asked for, and downstream data that fits the images."""
    if cfg.init == "imagenet" and not imagenet_weights_file(cfg.backbone).is_file():
        raise UserError(f"--init imagenet: no ImageNet weights of {cfg.backbone} at "
                        f"{imagenet_weights_file(cfg.backbone)}; download them there or start from scratch")
    d = cfg.downstream
    _check_channels("--downstream", d.data, channels)
    task_data(*d.data_choices(), d.image_size, d.seed)  # its root, label task and splits


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Train the runs; ``--orderings curriculum`` trains the singles first, then the orderings they label C."""
    roots = [item.partition("=")[2] for item in args.data.split(",")]
    apply_storage_options(args.storage_option, [*roots, args.downstream_root, args.downstream_eval_root])
    check_launcher_args(args)
    if args.launcher == "submitit" and args.orderings == "curriculum":
        raise UserError("--orderings curriculum chooses its orderings after the singles finish; with --launcher "
                        "submitit run the singles first (--max-length 1), then --orderings all or listed ones")
    configs = _configs(args, _wanted(args, singles_only=args.orderings == "curriculum"))
    device = resolve_device(args.device)
    check_output_folder(args.runs_dir, "--runs-dir")
    if args.launcher == "submitit":
        return launch(_planned_cells(args, configs), args, "ssl.curriculum", argv)
    own_eval_root = args.downstream_eval_root is not None or args.downstream_eval not in (None, args.downstream)
    roles = {"pretext": "--data NAME=ROOT", "train": "--downstream-root",
             "evaluation": "--downstream-eval-root" if own_eval_root else "--downstream-root",
             "evaluation_data": "--downstream-eval"}
    with data_options(roles):
        return on_every_process(device, lambda here: _run_here(args, configs, command_line(PROG, argv), here))


def _planned_cells(args: argparse.Namespace, configs: list[tuple[str, CurriculumConfig]]) -> list[Cell[Any]]:
    """The grid's cells as the jobs will see them: on GPUs when the jobs have GPUs (bf16 unless ``--amp off``,
    a part of every step's key), checked against the folders; nothing is trained."""
    jobs_on_gpus = args.gpus_per_cell > 0
    device = torch.device("cuda" if jobs_on_gpus else "cpu")
    bf16 = args.amp != "off" if jobs_on_gpus else use_bf16_autocast(args.amp, device)
    first = configs[0][1]
    images, _ = unlabelled_images(tuple(parse_data(",".join(first.data))), first.image_size, first.max_images, 0)
    return check_cells(curriculum_cells(configs, images, Runtime(device, bf16, 0, False, args.runs_dir)))


def _run_here(args: argparse.Namespace, configs: list[tuple[str, CurriculumConfig]], command: str,
              here: torch.device) -> int:
    """The runs of ``configs`` in this process (every check first); then, for ``--orderings curriculum``, the
    orderings the singles' results label C."""
    local_batch_size(configs[0][1].batch_size)  # a global batch the processes cannot share stops here
    runtime = Runtime(here, use_bf16_autocast(args.amp, here), workers_for(args.workers, here), not args.no_progress,
                      args.runs_dir)
    first = configs[0][1]
    images, channels = unlabelled_images(tuple(parse_data(",".join(first.data))), first.image_size, first.max_images, 0)
    _check_start_and_downstream(first, channels)
    for name, _ in configs:
        read_results(args.runs_dir / name)  # a damaged results.json of a finished run stops here, before any training
    cells = check_cells(curriculum_cells(configs, images, runtime))
    if args.only_cell is not None:
        cells = only_cell(cells, args.only_cell)
    print_on_main(f"{len(configs)} run(s) on {len(images)} unlabelled images of {', '.join(first.data)}; "
                  f"downstream {first.downstream.data}; {here}")
    runner = CurriculumRunner(images, channels, runtime, command, _build_monitor(first, channels))
    report = run_here(cells, runner, runner.skipped)
    if args.orderings == "curriculum":  # a run ends at a barrier: every process reads the singles' results
        done = {name for name, _ in configs}
        later = [(name, cfg) for name, cfg in _configs(args, _wanted(args)) if name not in done]
        report = report.add(run_here(check_cells(curriculum_cells(later, images, runtime)), runner, runner.skipped))
    report.raise_if_failed()
    return 0


def _build_monitor(cfg: CurriculumConfig, channels: int) -> Monitor | None:
    """The monitor of ``cfg``'s steps at their image size (its data checked: labelled, the images' channels)."""
    if cfg.monitor is None:
        return None
    monitor_cfg = MonitorConfig(**cfg.monitor)
    _check_channels("--monitor", monitor_cfg.data, channels)
    monitor = Monitor(monitor_cfg, cfg.image_size)
    print_on_main(f"monitor: k-NN balanced accuracy on {monitor_cfg.describe()}")
    return monitor


def _runs(args: argparse.Namespace) -> int:
    check_options([(not args.plan or args.max_length >= 2,
                    f"--max-length {args.max_length}: a plan proposes orderings of 2 tasks or more, so it must be "
                    "at least 2")])
    runs = read_runs(args.runs_dir)
    if not runs:
        raise UserError(f"no finished curriculum run in {args.runs_dir}; run some with {PROG} run")
    if args.plan:
        groups: dict[str, list[dict]] = {}
        for run in runs:
            groups.setdefault(settings_group(run), []).append(run)
        proposals = []
        for group, members in sorted(groups.items()):
            tasks = _tasks(args.tasks) if args.tasks else tuple(sorted(
                {r["tasks"][0] for r in members if len(r["tasks"]) == 1 and r["init"] == "scratch"}))
            proposals += [(label, ordering, group)
                          for ordering, label in plan(members, tasks, args.max_length, label_by=args.label_by)
                          if len(tasks) >= 2]
        if not proposals:
            raise UserError("--plan needs at least two tasks with single-task runs (or --tasks)")
        for label, ordering, group in proposals:
            print(f"{label}\t{ordering}\t{group}")
        return 0
    print(render(table(runs, args.label_by), args.format, args.label_by))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args, argv) if args.command == "run" else _runs(args)


if __name__ == "__main__":
    run_cli(main)
