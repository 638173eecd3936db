"""Does attention inside the lungs (AIL) see a shortcut? The same classifier with and without a label-correlated mark.

    python -m bench.attention_shortcut --device cpu      # resnet18, 128 px, 3 seeds (about 35 minutes on 2 cores)

For each seed, one classifier is trained (the :mod:`evaluate.protocol.training`
loop: AdamW, class-balanced loss, fixed learning rate) on phantom radiographs
of the v3-0s task **without** a mark, and one on the same images **with** the
shortcut mark: a bright square below the lungs, in the slot of the image's
finding (none for No Finding), that names the class with probability
``--shortcut``. Both are scored on the same held-out test images without and
with the mark:

* **dependence**: balanced accuracy with and without the mark. A model that
  learnt the shortcut loses accuracy when the mark is gone.
* **AIL of the finding's class** on the test images that have a finding
  (No Finding has nothing to point at), against the phantoms' exact lung
  masks. Grad-CAM maps at ``--layers``, upsampled bilinearly to the image:
  at 128 px ResNet ``layer3`` is 8 x 8, fine enough to tell the lungs from
  the mark below them, while ``layer4`` (4 x 4) puts the mark and the lower
  lungs in one cell. ``layer3`` is the layer of the verdict.
* **sanity check** (Adebayo et al. 2018, :mod:`evaluate.ail.sanity`): the
  same maps of a copy of the model with every weight re-drawn; their rank
  correlation with the trained model's maps must be low (below 0.5) for the
  maps to say anything about the model. The randomised model's AIL is shown
  beside.

The positive control: the shortcut-trained model, shown its mark, must look
outside the lungs more than the model trained without it. The verdict says
on how many seeds its AIL at the verdict layer was lower, and by how much on
average. The tables give mean and standard deviation over the seeds.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from datasets.label_tasks import label_task
from datasets.registry import build_dataset
from datasets.sample import IMAGE, LABEL, MASK
from evaluate.ail.cam import attention_inside_lungs, overlay_grid, saliency_maps
from evaluate.ail.sanity import SANITY_MAX_CORRELATION, randomised_copy, rank_correlation
from evaluate.protocol.task_data import TaskData, labels_of
from evaluate.protocol.training import FinetuneConfig, score, train_classifier
from models.backbones import Classifier, backbone_names, build_backbone
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError
from plumbing.precision import add_amp_arg, use_bf16_autocast
from plumbing.runtime import Runtime

from .rows import device_name

TASK = label_task(3, "0s")
MODELS = ("without mark", "with mark")
TESTS = ("no mark", "marked")
MAP_BATCH = 32


def _phantoms(split: str, n: int, resolution: int, seed: int, shortcut: float | None) -> torch.utils.data.Dataset:
    return build_dataset("phantom", split=split, task=TASK, resolution=resolution, augment=False, length=n,
                         seed=seed, shortcut=shortcut)


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def finding_images(dataset: torch.utils.data.Dataset, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, lung masks)`` of the first ``limit`` images of ``dataset`` whose class is a finding."""
    rows = torch.nonzero(labels_of(dataset) > 0).flatten()[:limit].tolist()
    if not rows:
        raise UserError(f"none of the {len(dataset)} test images has a finding; pass a larger --test-images")
    samples = [dataset[i] for i in rows]
    return (torch.stack([s[IMAGE] for s in samples]), torch.tensor([int(s[LABEL]) for s in samples]),
            torch.stack([s[MASK] for s in samples]))


def class_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str,
               device: torch.device) -> torch.Tensor:
    """Grad-CAM maps ``[N, 1, H, W]`` (on the CPU) of each image's class at ``layer``, in batches."""
    model = model.to(device).eval()
    return torch.cat([saliency_maps(model, images[i:i + MAP_BATCH].to(device), labels[i:i + MAP_BATCH], layer).cpu()
                      for i in range(0, len(images), MAP_BATCH)])


def _verdict(rows: dict[str, dict[str, list[float]]], key: str) -> str:
    plain, marked = rows[MODELS[0]][key], rows[MODELS[1]][key]
    lower = sum(m < p for p, m in zip(plain, marked, strict=True))
    gap = statistics.mean(p - m for p, m in zip(plain, marked, strict=True))
    seen = "sees" if lower == len(plain) and gap > 0 else "does not clearly see"
    return (f"AIL {seen} the shortcut ({key}): the shortcut model's AIL is lower on {lower}/{len(plain)} seeds, "
            f"by {gap:.3f} on average")


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.attention_shortcut",
                         "Balanced accuracy and AIL of classifiers trained with and without a shortcut mark.",
                         example="python -m bench.attention_shortcut --seeds 0,1,2 --device cpu")
    parser.add_argument("--backbone", choices=backbone_names(), default="resnet18", help="backbone architecture")
    parser.add_argument("--image-size", type=int, default=128, help="square input size in pixels")
    parser.add_argument("--train-images", type=int, default=1500, help="training images (10%% more for validation)")
    parser.add_argument("--test-images", type=int, default=500, help="held-out test images")
    parser.add_argument("--ail-images", type=int, default=128,
                        help="test images with a finding whose maps are scored")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--shortcut", type=float, default=0.9,
                        help="probability that the mark names the class in the shortcut model's training images")
    parser.add_argument("--seeds", type=int, default=3, help="seeds (each trains both models)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated modules whose Grad-CAM maps are scored, the first giving the verdict "
                             "(default: layer3 and layer4 of a ResNet, else the classifier's last feature map)")
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
    tests = {name: _phantoms("test", args.test_images, res, 0, shortcut)
             for name, shortcut in zip(TESTS, (None, args.shortcut), strict=True)}
    findings = {name: finding_images(test, args.ail_images) for name, test in tests.items()}
    if args.layers is None:
        args.layers = "backbone.body.layer3,backbone.body.layer4" if args.backbone.startswith("resnet") else ""
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in MODELS}
    architecture = Classifier(build_backbone(args.backbone, 1), len(TASK.classes))
    layers = [name for name in args.layers.split(",") if name] or [architecture.cam_layer]
    modules = dict(architecture.named_modules())
    if unknown := [name for name in layers if name not in modules]:
        raise UserError(f"--layers: {', '.join(unknown)} not in the {args.backbone} classifier (e.g. "
                        f"backbone.body.layer3 of a ResNet)")
    for seed in range(args.seeds):
        for name, shortcut in zip(MODELS, (None, args.shortcut), strict=True):
            train = _phantoms("train", args.train_images, res, seed, shortcut)
            validation = _phantoms("val", max(1, args.train_images // 10), res, seed, shortcut)
            data = TaskData(TASK.classes, 1, train, validation, tests["no mark"], labels_of(train))
            cfg = FinetuneConfig(backbone=args.backbone, image_size=res, epochs=args.epochs, batch_size=args.batch_size,
                                 lr=args.lr, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                model: Classifier = train_classifier(cfg, data, Runtime(device, amp, 0, False, Path(tmp)), args.lr,
                                                     args.epochs).model
            scores = {f"BA, {test}": score(model, tests[test], TASK.classes, batch_size=64, workers=0, device=device,
                                           amp=amp)["balanced_accuracy"] for test in TESTS}
            scores["dependence"] = scores["BA, marked"] - scores["BA, no mark"]
            random_model = randomised_copy(model, seed)
            for layer in layers:
                short = layer.rsplit(".", 1)[-1]
                for test, (images, labels, masks) in findings.items():
                    maps = class_maps(model, images, labels, layer, device)
                    random_maps = class_maps(random_model, images, labels, layer, device)
                    ail = attention_inside_lungs(maps, masks)
                    scores[f"AIL {short}, {test}"] = float(ail.mean())
                    for c in labels.unique().tolist():
                        scores[f"AIL {short}, {test}, {TASK.classes[c]}"] = float(ail[labels == c].mean())
                    scores[f"random AIL {short}, {test}"] = float(attention_inside_lungs(random_maps, masks).mean())
                    scores[f"rank corr. {short}, {test}"] = float(rank_correlation(maps, random_maps).mean())
                    if args.grids is not None and seed == 0:
                        k = min(16, len(images))
                        with torch.no_grad():
                            predicted = model(images[:k].to(device)).argmax(dim=1).cpu()
                        file = f"trained-{name}_{short}_{test}.png".replace(" ", "-")
                        overlay_grid(images[:k], maps[:k], masks[:k], labels[:k].tolist(), predicted.tolist(),
                                     TASK.classes, args.grids / file)
            for key, value in scores.items():
                rows[name].setdefault(key, []).append(value)
            print(f"seed {seed}, trained {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
                  file=sys.stderr)
    uniform = float(findings["marked"][2].float().mean())
    print("\nBalanced accuracy on the test images, without and with the mark\n")
    print("| trained | BA, no mark | BA, marked | dependence (marked - no mark) |\n|---|---|---|---|")
    for name in MODELS:
        print(f"| {name} | " + " | ".join(_mean_std(rows[name][c]) for c in ("BA, no mark", "BA, marked",
                                                                              "dependence")) + " |")
    print("\nGrad-CAM of the finding's class on test images with a finding: AIL, and the randomised-model sanity "
          "check\n")
    print("| trained | layer | test images | AIL | randomised model's AIL | rank corr. trained vs randomised |")
    print("|---|---|---|---|---|---|")
    for name in MODELS:
        for layer in layers:
            short = layer.rsplit(".", 1)[-1]
            for test in TESTS:
                cells = [rows[name][f"{kind}{short}, {test}"] for kind in ("AIL ", "random AIL ", "rank corr. ")]
                print(f"| {name} | {short} | {test} | " + " | ".join(_mean_std(c) for c in cells) + " |")
    verdict_layer = layers[0].rsplit(".", 1)[-1]
    classes = [c for c in TASK.classes[1:] if f"AIL {verdict_layer}, marked, {c}" in rows[MODELS[0]]]
    print(f"\nAIL at {verdict_layer} per finding class (the heart of Cardiomegaly lies outside the lungs)\n")
    print("| trained | test images | " + " | ".join(classes) + " |\n|---|---|" + "---|" * len(classes))
    for name in MODELS:
        for test in TESTS:
            cells = [_mean_std(rows[name][f"AIL {verdict_layer}, {test}, {c}"]) for c in classes]
            print(f"| {name} | {test} | " + " | ".join(cells) + " |")
    print(f"\nmean ± std over {args.seeds} seeds; a map spread evenly over the image scores AIL {uniform:.3f} "
          f"(the lungs' share of these images); {device_name(device)}")
    print(_verdict(rows, f"AIL {verdict_layer}, marked") + ".")
    correlations = [v for name in MODELS for key, values in rows[name].items() if key.startswith("rank corr.")
                    for v in values]
    passed = sum(c < SANITY_MAX_CORRELATION for c in correlations)
    print(f"Sanity check: {passed}/{len(correlations)} map sets rank-correlate below {SANITY_MAX_CORRELATION} with "
          f"their randomised model's (max {max(correlations):.3f}).")
    return 0


if __name__ == "__main__":
    run_cli(main)
