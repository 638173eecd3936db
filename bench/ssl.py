"""Speed of pretext steps (MoCo v2, SwAV): the real data path beside the model step alone.

    python -m bench.ssl --device cpu --backbone resnet18 --image-size 64
    python -m bench.ssl --device cuda --backbone resnet50 --image-size 224 --batch-size 256 --workers 8

For each task of ``--tasks`` (default settings of :mod:`ssl.tasks`), in
one process, ``--repeats`` interleaved rounds of ``--steps``
:meth:`ssl.trainer.PretextTrainer.step` calls each (the best round of each
kept) after ``--warmup`` untimed steps of each:

* **model step alone**: the same batch, already on the device, every step
  (the views are drawn on the device inside the step, so they count here);
* **through the data path**: batches from :func:`datasets.batches.training_batches`
  over :func:`ssl.data.unlabelled_images`, the loader ``ssl.curriculum``
  uses - a synthetic Zarr store through the block loader (``--source
  store``: ``--store-images`` test images written once into a temporary
  store) or phantom radiographs rendered on the fly through a ``DataLoader``
  with ``--workers`` workers (``--source phantom``).

The ratio (data path / model step) says how much of the step's speed the
loading keeps; 100% means the loader is never waited for.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from datasets.batches import training_batches
from plumbing.cli import add_device_arg, make_parser, parse_list, resolve_device, run_cli, workers_for
from plumbing.errors import UserError
from plumbing.lookup import look_up
from plumbing.precision import add_amp_arg, use_bf16_autocast
from ssl.config import StepConfig
from ssl.data import parse_data, unlabelled_images
from ssl.tasks import task_names
from ssl.trainer import PretextData, PretextTrainer, build_task

from .read_store import test_images, write_store
from .rows import Row, add_rows_out_arg, append_rows, device_name
from .timing import add_data_path_args, alone_and_through, check_sizes

LR = 0.03


def unlabelled(source: str, folder: Path, n: int, image_size: int) -> tuple[Dataset, int]:
    """The benchmark's unlabelled images: a temporary store of ``n`` test images, or ``n`` phantoms."""
    if source == "phantom":
        return unlabelled_images(parse_data("phantom"), image_size, n, 0)
    url = str(folder / "bench.zarr")
    write_store(url, test_images(n, image_size))
    return unlabelled_images(parse_data(f"synthetic={url}"), image_size, None, 0)


def bench_task(
    task: str, images: Dataset, channels: int, device: torch.device, backbone: str, image_size: int,
    batch_size: int, steps: int, warmup: int, workers: int, amp: bool, repeats: int,
) -> tuple[float, float]:
    """(images/s of the model step alone, images/s through the data path), the best of ``repeats`` rounds each."""
    cfg = StepConfig(task=task, settings={}, data=("bench",), max_images=None, backbone=backbone,
                     image_size=image_size, epochs=1, batch_size=batch_size, lr=LR, lr_grid=(LR,), lr_trial_epochs=1,
                     weight_decay=1e-4, momentum=0.9, seed=0, start="scratch", bf16=amp, processes=1,
                     store_workers=workers)
    trainer = PretextTrainer(build_task(cfg, PretextData(images, channels), 10**6), cfg, LR, 10**6, device, amp)
    trainer.task.start_epoch(1)  # past SwAV's first epoch, whose prototypes stay frozen
    stream = iter(training_batches(images, batch_size, 0, 0, workers, device))
    first = next(stream)
    fixed = {"image": first["image"].to(device), "index": torch.as_tensor(first["index"]).to(device)}
    return alone_and_through(trainer.step, fixed, stream, steps=steps, warmup=warmup, repeats=repeats,
                             batch_size=batch_size, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.ssl",
                         "Benchmark pretext steps: images/s through the data path beside the model step alone.",
                         example="python -m bench.ssl --tasks moco,swav --device cuda")
    parser.add_argument("--tasks", default="moco,swav", help=f"comma-separated tasks ({', '.join(task_names())})")
    add_data_path_args(parser, steps=5, warmup=2)
    parser.add_argument("--images", type=int, default=2048, help="images in the temporary store (or phantoms)")
    add_amp_arg(parser)
    add_device_arg(parser)
    add_rows_out_arg(parser)
    args = parser.parse_args(argv)
    tasks = parse_list(args.tasks, "--tasks", what="task names")
    for t in tasks:
        look_up("pretext task", t, task_names(), option="--tasks")
    if not tasks:
        raise UserError(f"--tasks {args.tasks!r}: name tasks of {', '.join(task_names())}")
    check_sizes(args, ("image_size", "batch_size", "steps", "repeats", "images"))
    if args.images < 2 * args.batch_size:
        raise UserError("--images must hold at least two batches (--batch-size)")
    device = resolve_device(args.device)
    workers = workers_for(args.workers, device)
    amp = use_bf16_autocast(args.amp, device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.backbone} {args.image_size} px, "
          f"batch {args.batch_size}, bf16 {'on' if amp else 'off'}, {args.source}, {workers} workers")
    where = f"{args.backbone} {args.image_size} px, batch {args.batch_size}"
    path = "block loader from a store" if args.source == "store" else f"phantoms rendered, {workers} workers"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ssl-") as tmp:
        images, channels = unlabelled(args.source, Path(tmp), args.images, args.image_size)
        for task in tasks:
            alone, through = bench_task(task, images, channels, device, args.backbone, args.image_size,
                                        args.batch_size, args.steps, args.warmup, workers, amp, args.repeats)
            ratio = 100 * through / alone
            print(f"{task}: model step alone {alone:,.1f} img/s; through the data path {through:,.1f} img/s "
                  f"({ratio:.0f}%)")
            rows += [Row("pretext step", f"{task}, {where}, model step alone", alone, "img/s"),
                     Row("pretext step", f"{task}, {where}, through the data path ({path})", through, "img/s"),
                     Row("pretext step", f"{task}, {where}, data path / model step", ratio, "%")]
    append_rows(args.rows_out, rows)
    return 0


if __name__ == "__main__":
    run_cli(main)
