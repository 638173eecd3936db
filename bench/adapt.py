"""Speed of the DCAN training step beside a plain classifier step at the same batch and resolution.

    python -m bench.adapt --device cpu --backbone resnet18 --image-size 64
    python -m bench.adapt --device cuda --backbone resnet50 --image-size 224 --batch-size 36

In one process, in ``--repeats`` interleaved rounds of ``--steps`` steps
(the best round of each kept, after ``--warmup`` untimed steps of each):

* **DCAN step**: :meth:`adapt.trainer.DcanTrainer.step` with the ``dcan``
  preset (every loss term, domain attention, correction blocks, frozen batch
  norm) on ``--batch-size`` source and ``--batch-size`` target images;
* **ours+em step**: the ``ours`` preset with ``--prior-correction em``
  towards a target prior of 90/10 (class-weighted feature and output MMD);
  beside it the uncorrected ``ours`` step, so the ratio is the cost of the
  weights alone;
* **plain step**: a :class:`models.backbones.Classifier` of the same
  backbone without attention, one SGD step of cross-entropy on the same
  ``2 x --batch-size`` images (bf16 autocast and channels_last on CUDA, as
  the DCAN step).

All count the ``2 x --batch-size`` images of a step; the ratio (DCAN / plain)
is the cost of the method. Batches are fixed tensors already on the device,
so the figures are the model step's alone.

**Label-free figures of an evaluation**: the seconds the prior estimates
(BBSE, EM with its temperature fit) and the validators (SND, DEV, BNM) take
on ``--selection-images`` target and ``--validation-images`` source
outputs of the backbone's feature width, beside the seconds of the forward
passes over those images that every evaluation already makes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from adapt.config import AdaptConfig, with_preset
from adapt.label_shift import estimate_priors
from adapt.model import build_model
from adapt.outputs import Outputs
from adapt.trainer import DcanTrainer
from adapt.validators import validator_scores
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


def _trainer(cfg: AdaptConfig, device: torch.device, amp: bool) -> DcanTrainer:
    model, _ = build_model(cfg, 1, CLASSES, Path("."))
    return DcanTrainer(model, cfg, device, amp)


def bench_adapt(device: torch.device, backbone: str, image_size: int, batch_size: int, steps: int, warmup: int,
                repeats: int, amp: bool) -> dict[str, float]:
    """Images/s of the ``dcan``, ``ours``, ``ours+em`` and plain steps, the best of ``repeats`` interleaved rounds."""
    base = replace(AdaptConfig(), backbone=backbone, init="scratch", batchnorm="frozen", image_size=image_size,
                   batch_size=batch_size, steps=10**6)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2 * batch_size, 1, image_size, image_size, generator=g).to(device)
    labels = torch.randint(CLASSES, (2 * batch_size,), generator=g).to(device)
    source = {"image": images[:batch_size], "label": labels[:batch_size]}
    target = {"image": images[batch_size:], "label": labels[batch_size:]}
    trainers = {"dcan": _trainer(with_preset(base, "dcan"), device, amp),
                "ours": _trainer(with_preset(base, "ours"), device, amp),
                "ours+em": _trainer(replace(with_preset(base, "ours"), prior_correction="em"), device, amp)}
    trainers["ours+em"].state.prior = [0.9] + [0.1 / (CLASSES - 1)] * (CLASSES - 1)
    steps_of: dict[str, Callable[[], object]] = {
        name: (lambda t=trainer: t.step((source, target))) for name, trainer in trainers.items()}
    steps_of["plain"] = _plain_step(base, images, labels, device, amp)
    for step in steps_of.values():
        _rate(step, warmup, 2 * batch_size, device)
    rounds = [{name: _rate(step, steps, 2 * batch_size, device) for name, step in steps_of.items()}
              for _ in range(repeats)]
    return {name: max(r[name] for r in rounds) for name in steps_of}


def bench_label_free(device: torch.device, backbone: str, image_size: int, selection: int, validation: int,
                     batch_size: int, amp: bool) -> tuple[float, float]:
    """(seconds of the prior estimates and validators on one evaluation's outputs, seconds of the forward passes
    that produce them), on random images through an ``ours`` network."""
    trainer = _trainer(with_preset(replace(AdaptConfig(), backbone=backbone, init="scratch", image_size=image_size),
                                   "ours"), device, amp)
    model = trainer.model.eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(selection + validation, 1, image_size, image_size, generator=g).to(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), bf16_autocast(device, amp):
        pieces = [model.corrected(model.backbone(x.contiguous(memory_format=trainer.layout)).float())
                  for x in images.split(batch_size)]
    _sync(device)
    forward = time.perf_counter() - t0
    features = torch.cat([f for f, _ in pieces]).float().cpu()
    logits = torch.cat([z for _, z in pieces]).float().cpu()
    labels = torch.randint(CLASSES, (validation,), generator=g)
    target = Outputs(logits[:selection], features[:selection], torch.full((selection,), -1))
    source = Outputs(logits[selection:], features[selection:], labels)
    t0 = time.perf_counter()
    estimate_priors(source.logits, source.labels, target.logits, torch.full((CLASSES,), 1 / CLASSES).double())
    validator_scores(source, target, 0)
    return time.perf_counter() - t0, forward


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.adapt",
                         "Benchmark the DCAN, ours and ours+em steps beside a plain classifier step (images/s) "
                         "and the label-free figures of an evaluation (s).",
                         example="python -m bench.adapt --backbone resnet18 --image-size 64 --device cuda")
    residual = sorted(n for n, s in BACKBONES.items() if s.residual)
    parser.add_argument("--backbone", choices=residual, default="resnet50", help="residual backbone")
    parser.add_argument("--image-size", type=int, default=224, help="square input size in pixels")
    parser.add_argument("--batch-size", type=int, default=36, help="images per domain (a step reads twice as many)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each measurement in each round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both measurements, interleaved (best kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each before the first round")
    parser.add_argument("--selection-images", type=int, default=1000, help="target images of the label-free figures")
    parser.add_argument("--validation-images", type=int, default=200, help="source validation images of them")
    add_amp_arg(parser)
    add_device_arg(parser)
    add_rows_out_arg(parser)
    args = parser.parse_args(argv)
    for option in ("image_size", "steps", "repeats", "selection_images", "validation_images"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be positive, not {getattr(args, option)}")
    if args.batch_size < 2 or args.warmup < 0:
        raise UserError("--batch-size must be at least 2 and --warmup >= 0")
    device = resolve_device(args.device)
    amp = use_bf16_autocast(args.amp, device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.backbone} {args.image_size} px, "
          f"{args.batch_size} + {args.batch_size} images a step, bf16 {'on' if amp else 'off'}")
    rates = bench_adapt(device, args.backbone, args.image_size, args.batch_size, args.steps, args.warmup,
                        args.repeats, amp)
    label_free, forward = bench_label_free(device, args.backbone, args.image_size, args.selection_images,
                                           args.validation_images, 2 * args.batch_size, amp)
    for name in ("dcan", "ours", "ours+em"):
        print(f"{name} step: {rates[name]:,.1f} img/s ({100 * rates[name] / rates['plain']:.0f}% of the plain step)")
    print(f"plain step: {rates['plain']:,.1f} img/s; ours+em / ours {100 * rates['ours+em'] / rates['ours']:.0f}%")
    print(f"label-free figures of one evaluation ({args.selection_images} target + {args.validation_images} source "
          f"images): {label_free:.2f} s beside {forward:.2f} s of forward passes")
    where = f"{args.backbone} {args.image_size} px, {args.batch_size} + {args.batch_size} images"
    append_rows(args.rows_out, [
        *(Row("domain adaptation", f"{where}, {name} step", rates[name], "img/s")
          for name in ("dcan", "ours", "ours+em", "plain")),
        Row("domain adaptation", f"{where}, DCAN / plain", 100 * rates["dcan"] / rates["plain"], "%"),
        Row("domain adaptation", f"{where}, ours+em / ours", 100 * rates["ours+em"] / rates["ours"], "%"),
        Row("domain adaptation", f"{args.backbone} {args.image_size} px, label-free figures of one evaluation",
            label_free, "s"),
        Row("domain adaptation", f"{args.backbone} {args.image_size} px, forward passes they read", forward, "s"),
    ])
    return 0


if __name__ == "__main__":
    run_cli(main)
