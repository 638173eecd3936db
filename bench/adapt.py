"""Speed of the DCAN training step beside a plain classifier step at the same batch and resolution.

    python -m bench.adapt --device cpu --backbone resnet18 --image-size 64
    python -m bench.adapt --device cuda --backbone resnet50 --image-size 224 --batch-size 36

In one process, in ``--repeats`` interleaved rounds of ``--steps`` steps
(the best round of each kept, after ``--warmup`` untimed steps of each):

* **DCAN step**: :meth:`adapt.trainer.DcanTrainer.step` with the ``dcan``
  preset (every loss term, domain attention, correction blocks, frozen batch
  norm) on ``--batch-size`` source and ``--batch-size`` target images;
* **plain step**: a :class:`models.backbones.Classifier` of the same
  backbone without attention, one SGD step of cross-entropy on the same
  ``2 x --batch-size`` images (bf16 autocast and channels_last on CUDA, as
  the DCAN step).

Both count the ``2 x --batch-size`` images of a step; the ratio (DCAN / plain)
is the cost of the method. Batches are fixed tensors already on the device,
so the figures are the model step's alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from adapt.config import AdaptConfig, with_preset
from adapt.model import build_model
from adapt.trainer import DcanTrainer
from models.backbones import BACKBONES, Classifier, build_backbone
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError
from plumbing.precision import add_amp_arg, bf16_autocast, memory_layout, use_bf16_autocast

from .rows import Row, add_rows_out_arg, append_rows, device_name

CLASSES = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[], object], steps: int, images: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * images / (time.perf_counter() - t0)


def _plain_step(cfg: AdaptConfig, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                amp: bool) -> Callable[[], float]:
    layout = memory_layout(device)
    model = Classifier(build_backbone(cfg.backbone, 1), CLASSES).to(device, memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    x = images.contiguous(memory_format=layout)

    def step() -> float:
        with bf16_autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def bench_adapt(device: torch.device, backbone: str, image_size: int, batch_size: int, steps: int, warmup: int,
                repeats: int, amp: bool) -> tuple[float, float]:
    """(images/s of the DCAN step, images/s of the plain step), the best of ``repeats`` rounds each."""
    cfg = with_preset(replace(AdaptConfig(), backbone=backbone, init="scratch", batchnorm="frozen",
                              image_size=image_size, batch_size=batch_size, steps=10**6), "dcan")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2 * batch_size, 1, image_size, image_size, generator=g).to(device)
    labels = torch.randint(CLASSES, (2 * batch_size,), generator=g).to(device)
    model, _ = build_model(cfg, 1, CLASSES, Path("."))
    trainer = DcanTrainer(model, cfg, device, amp)
    source = {"image": images[:batch_size], "label": labels[:batch_size]}
    target = {"image": images[batch_size:], "label": labels[batch_size:]}

    def dcan() -> dict[str, float]:
        return trainer.step((source, target))

    plain = _plain_step(cfg, images, labels, device, amp)
    _rate(dcan, warmup, 2 * batch_size, device)
    _rate(plain, warmup, 2 * batch_size, device)
    rounds = [(_rate(dcan, steps, 2 * batch_size, device), _rate(plain, steps, 2 * batch_size, device))
              for _ in range(repeats)]
    return max(r[0] for r in rounds), max(r[1] for r in rounds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.adapt",
                         "Benchmark the DCAN training step beside a plain classifier step (images/s).")
    residual = sorted(n for n, s in BACKBONES.items() if s.residual)
    parser.add_argument("--backbone", choices=residual, default="resnet50", help="residual backbone")
    parser.add_argument("--image-size", type=int, default=224, help="square input size in pixels")
    parser.add_argument("--batch-size", type=int, default=36, help="images per domain (a step reads twice as many)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each measurement in each round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both measurements, interleaved (best kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each before the first round")
    add_amp_arg(parser)
    add_device_arg(parser)
    add_rows_out_arg(parser)
    args = parser.parse_args(argv)
    for option in ("image_size", "steps", "repeats"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be positive, not {getattr(args, option)}")
    if args.batch_size < 2 or args.warmup < 0:
        raise UserError("--batch-size must be at least 2 and --warmup >= 0")
    device = resolve_device(args.device)
    amp = use_bf16_autocast(args.amp, device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.backbone} {args.image_size} px, "
          f"{args.batch_size} + {args.batch_size} images a step, bf16 {'on' if amp else 'off'}")
    dcan, plain = bench_adapt(device, args.backbone, args.image_size, args.batch_size, args.steps, args.warmup,
                              args.repeats, amp)
    ratio = 100 * dcan / plain
    print(f"DCAN step: {dcan:,.1f} img/s; plain step: {plain:,.1f} img/s (DCAN / plain {ratio:.0f}%)")
    where = f"{args.backbone} {args.image_size} px, {args.batch_size} + {args.batch_size} images"
    append_rows(args.rows_out, [
        Row("domain adaptation", f"{where}, DCAN step", dcan, "img/s"),
        Row("domain adaptation", f"{where}, plain step", plain, "img/s"),
        Row("domain adaptation", f"{where}, DCAN / plain", ratio, "%"),
    ])
    return 0


if __name__ == "__main__":
    run_cli(main)
