"""Speed of the downstream classifier's training: the real data path beside the model step alone.

    python -m bench.finetune --device cpu --backbone resnet18 --image-size 64
    python -m bench.finetune --device cuda --backbone resnet50 --image-size 224 --batch-size 128 --workers 8

Both measurements run :class:`evaluate.protocol.training.ClassifierTrainer`
steps (AdamW, class-balanced loss; bf16 autocast and channels_last on CUDA)
in the same process, in ``--repeats`` interleaved rounds of ``--steps`` steps
each (the best round of each is kept), after ``--warmup`` untimed steps of
each:

* **model step alone**: the same batch, already on the device, every step;
* **through the data path**: batches from :func:`datasets.batches.training_batches`,
  the loader ``evaluate.finetune`` uses - a synthetic Zarr store through the
  block loader (``--source store``: ``--store-images`` test images written
  once into a temporary store, delivered to the device as uint8) or phantom
  radiographs rendered on the fly through a ``DataLoader`` with ``--workers``
  workers (``--source phantom``).

The ratio (data path / model step) says how much of the model's speed the
loading keeps; 100% means the loader is never waited for.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datasets.batches import training_batches
from datasets.sample import IMAGE, LABEL
from evaluate.protocol.task_data import DataChoice
from evaluate.protocol.training import ClassifierTrainer, FinetuneConfig, build_classifier
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli, workers_for
from plumbing.errors import UserError
from plumbing.precision import add_amp_arg, use_bf16_autocast

from .read_store import test_images, write_store
from .rows import Row, add_rows_out_arg, append_rows, device_name
from .timing import add_data_path_args, alone_and_through, check_sizes


def _dataset(source: str, folder: Path, n: int, resolution: int) -> Any:
    if source == "phantom":
        return DataChoice("phantom", None, 3, "0s", n).build("train", resolution, augment=False)
    url = str(folder / "bench.zarr")
    write_store(url, test_images(n, resolution))
    return DataChoice("synthetic", url, 1, "0s", None).build("train", resolution, augment=False)


def bench_finetune(
    device: torch.device, source: str, backbone: str, image_size: int, batch_size: int, steps: int, warmup: int,
    workers: int, store_images: int, amp: bool, repeats: int,
) -> tuple[float, float]:
    """(images/s of the model step alone, images/s through the data path), the best of ``repeats`` rounds each."""
    cfg = FinetuneConfig(backbone=backbone, image_size=image_size, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        dataset = _dataset(source, Path(tmp), store_images if source == "store" else 2048, image_size)
        model, _ = build_classifier(cfg, 1, 4, Path(tmp))
        trainer = ClassifierTrainer(model, cfg, 1e-4, 10**6, torch.full((4,), 1.0), device, amp)
        stream = iter(training_batches(dataset, batch_size, 0, 0, workers, device))
        first = next(stream)
        fixed = {IMAGE: first[IMAGE].to(device), LABEL: torch.as_tensor(first[LABEL]).to(device) % 4}
        return alone_and_through(trainer.step, fixed, stream, steps=steps, warmup=warmup, repeats=repeats,
                                 batch_size=batch_size, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.finetune",
                         "Benchmark classifier training: images/s through the data path beside the model step alone.",
                         example="python -m bench.finetune --backbone resnet50 --image-size 224 --device cuda")
    add_data_path_args(parser, steps=10, warmup=5)
    parser.add_argument("--store-images", type=int, default=4096, help="images in the temporary store")
    add_amp_arg(parser)
    add_device_arg(parser)
    add_rows_out_arg(parser)
    args = parser.parse_args(argv)
    check_sizes(args, ("image_size", "batch_size", "steps", "repeats", "store_images"))
    if args.source == "store" and args.store_images < args.batch_size:
        raise UserError("--store-images must hold at least one --batch-size")
    device = resolve_device(args.device)
    workers = workers_for(args.workers, device)
    amp = use_bf16_autocast(args.amp, device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.backbone} {args.image_size} px, "
          f"batch {args.batch_size}, bf16 {'on' if amp else 'off'}, {args.source}, {workers} workers")
    alone, through = bench_finetune(device, args.source, args.backbone, args.image_size, args.batch_size, args.steps,
                                    args.warmup, workers, args.store_images, amp, args.repeats)
    ratio = 100 * through / alone
    print(f"model step alone: {alone:,.1f} img/s; through the data path: {through:,.1f} img/s ({ratio:.0f}%)")
    where = f"{args.backbone} {args.image_size} px, batch {args.batch_size}"
    path = "block loader from a store" if args.source == "store" else f"phantoms rendered, {workers} workers"
    append_rows(args.rows_out, [
        Row("classifier training", f"{where}, model step alone", alone, "img/s"),
        Row("classifier training", f"{where}, through the data path ({path})", through, "img/s"),
        Row("classifier training", f"{where}, data path / model step", ratio, "%"),
    ])
    return 0


if __name__ == "__main__":
    run_cli(main)
