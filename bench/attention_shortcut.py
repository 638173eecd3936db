"""Does attention inside the lungs (AIL) see a shortcut? The same classifier with and without a label-correlated mark.

    python -m bench.attention_shortcut --device cpu            # resnet18, 64 px, 3 seeds (about 10 minutes on 2 cores)

For each seed, one classifier is trained (the :mod:`evaluate.protocol.training`
loop: AdamW, class-balanced loss, fixed learning rate) on phantom radiographs
of the v3-0s task **without** a mark, and one on the same images **with** the
shortcut mark (a bright square below the lungs that names the class with
probability ``--shortcut``). Both are scored on the same held-out test images
without the mark and on the same images with the mark: balanced accuracy,
and the Grad-CAM AIL of the predicted class against the phantoms' exact lung
masks at each of ``--layers`` (ResNet ``layer4`` is 2 x 2 at 64 px,
``layer3`` 4 x 4). The table gives mean and standard deviation over the
seeds.

A model that learnt the shortcut should look outside the lungs more (lower
AIL) and lose accuracy when the mark is gone.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from datasets.label_tasks import label_task
from datasets.registry import build_dataset
from evaluate.ail.cam import overlay_grid
from evaluate.ail.lung_masks import MaskSource
from evaluate.ail.measurement import measure_attention
from evaluate.protocol.task_data import TaskData, labels_of
from evaluate.protocol.training import FinetuneConfig, score, train_classifier
from models.backbones import backbone_names
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError
from plumbing.precision import add_amp_arg, use_bf16_autocast
from plumbing.runtime import Runtime

from .rows import device_name

TASK = label_task(3, "0s")


def _phantoms(split: str, n: int, resolution: int, seed: int, shortcut: float | None) -> torch.utils.data.Dataset:
    return build_dataset("phantom", split=split, task=TASK, resolution=resolution, augment=False, length=n,
                         seed=seed, shortcut=shortcut)


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.attention_shortcut",
                         "Balanced accuracy and AIL of classifiers trained with and without a shortcut mark.")
    parser.add_argument("--backbone", choices=backbone_names(), default="resnet18", help="backbone architecture")
    parser.add_argument("--image-size", type=int, default=64, help="square input size in pixels")
    parser.add_argument("--train-images", type=int, default=2000, help="training images (10%% more for validation)")
    parser.add_argument("--test-images", type=int, default=500, help="held-out test images")
    parser.add_argument("--ail-images", type=int, default=256, help="test images whose AIL is measured")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--shortcut", type=float, default=0.9,
                        help="probability that the mark names the class in the shortcut model's training images")
    parser.add_argument("--seeds", type=int, default=3, help="seeds (each trains both models)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated modules whose Grad-CAM maps are scored (none given: layer4 and layer3 "
                             "of a ResNet, else the classifier's last feature map)")
    parser.add_argument("--grids", type=Path, default=None,
                        help="folder for the overlay grids of seed 0's models (each layer, marked and unmarked test)")
    add_amp_arg(parser)
    add_device_arg(parser)
    args = parser.parse_args(argv)
    for option in ("image_size", "train_images", "test_images", "ail_images", "epochs", "batch_size", "seeds"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be positive, not {getattr(args, option)}")
    if not 0 <= args.shortcut <= 1 or not args.lr > 0:
        raise UserError("--shortcut must lie in [0, 1] and --lr be positive")
    device = resolve_device(args.device)
    amp = use_bf16_autocast(args.amp, device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.backbone} {args.image_size} px, "
          f"{args.train_images} training images, {args.epochs} epochs at lr {args.lr:g}; shortcut p = {args.shortcut}",
          file=sys.stderr)
    res = args.image_size
    test_plain = _phantoms("test", args.test_images, res, 0, None)
    test_marked = _phantoms("test", args.test_images, res, 0, args.shortcut)
    if args.layers is None:
        args.layers = "backbone.body.layer4,backbone.body.layer3" if args.backbone.startswith("resnet") else ""
    layers = [name for name in args.layers.split(",") if name]
    rows: dict[str, dict[str, list[float]]] = {"without mark": {}, "with mark": {}}
    for seed in range(args.seeds):
        for name, shortcut in (("without mark", None), ("with mark", args.shortcut)):
            train = _phantoms("train", args.train_images, res, seed, shortcut)
            validation = _phantoms("val", max(1, args.train_images // 10), res, seed, shortcut)
            data = TaskData(TASK.classes, 1, train, validation, test_plain, labels_of(train))
            cfg = FinetuneConfig(backbone=args.backbone, image_size=res, epochs=args.epochs, batch_size=args.batch_size,
                                 lr=args.lr, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                runtime = Runtime(device, amp, 0, False, Path(tmp))
                model = train_classifier(cfg, data, runtime, args.lr, args.epochs).model
            scores = {
                "test BA, no mark": score(model, test_plain, TASK.classes, batch_size=64, workers=0, device=device,
                                          amp=amp)["balanced_accuracy"],
                "test BA, marked": score(model, test_marked, TASK.classes, batch_size=64, workers=0, device=device,
                                         amp=amp)["balanced_accuracy"],
            }
            for layer in layers or [model.cam_layer]:
                for test, marked in ((test_plain, "no mark"), (test_marked, "marked")):
                    attention = measure_attention(
                        model, test, MaskSource(test, "phantom", None, res), method="gradcam", class_of="predicted",
                        max_images=args.ail_images, batch_size=64, keep=16, device=device, progress=False, layer=layer,
                    )
                    short = layer.rsplit(".", 1)[-1]
                    scores[f"AIL {short}, {marked}"] = float(attention.ail.mean())
                    uniform = float(attention.lung_fraction.mean())
                    if args.grids is not None and seed == 0:
                        k = len(attention.images)
                        file = f"trained-{name}_{short}_{marked}.png".replace(" ", "-")
                        overlay_grid(attention.images, attention.maps, attention.masks, attention.labels[:k].tolist(),
                                     attention.predicted[:k].tolist(), TASK.classes, args.grids / file)
            for key, value in scores.items():
                rows[name].setdefault(key, []).append(value)
            print(f"seed {seed}, trained {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
                  file=sys.stderr)
    columns = list(rows["without mark"])
    print(f"\n| trained | {' | '.join(columns)} |")
    print("|---|" + "---|" * len(columns))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(_mean_std(values[c]) for c in columns) + " |")
    print(f"\nmean ± std over {args.seeds} seeds; a map spread evenly over the image scores AIL {uniform:.3f} "
          f"(the lungs' share of these images); {device_name(device)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
