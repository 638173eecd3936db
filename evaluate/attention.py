"""``python -m evaluate.attention --run RUN``: how much of a classifier's attention lies inside the lungs (AIL).

Reads the run's exported classifier (``classifier.safetensors``) and, unless
``--data`` names other images, the run's evaluation images (its
``config.json``: an ``evaluate.finetune`` run's ``finetune`` record, or the
``evaluation_data`` record other trainers write, such as ``adapt.train``);
computes Grad-CAM (or CAM) maps through ``monai.visualize`` and the AIL of
every image (:mod:`evaluate.ail.measurement`); writes
``attention.json``, ``attention.png`` and ``attention.md`` into the run
folder. Phantoms bring exact lung masks; real images need ``--lung-masks DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from datasets.registry import get_spec
from evaluate.ail.cam import METHODS
from evaluate.ail.lung_masks import MaskSource
from evaluate.ail.measurement import CLASS_OF, measure_attention, write_attention
from evaluate.protocol.task_data import DataChoice, task_classes
from evaluate.protocol.training import FinetuneConfig
from models.model_file import CLASSIFIER_FILE, load_classifier
from plumbing.cli import add_device_arg, add_runs_dir_arg, make_parser, resolve_device, run_cli
from plumbing.config import dataclass_from_dict
from plumbing.errors import UserError
from plumbing.run_folders import CONFIG_FILE

PROG = "python -m evaluate.attention"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Attention inside the lungs (AIL) of a fine-tuned classifier, with an overlay grid.",
                         example="python -m evaluate.attention --run finetune-phantom-resnet18 --method gradcam")
    parser.add_argument("--run", required=True,
                        help="evaluate.finetune or adapt.train run folder (a path, or a name in --runs-dir)")
    parser.add_argument("--method", choices=METHODS, default="gradcam", help="saliency maps")
    parser.add_argument("--class-of", choices=CLASS_OF, default="predicted", help="the class whose map is scored")
    parser.add_argument("--layer", default=None,
                        help="module whose Grad-CAM maps are taken, e.g. backbone.body.layer3 (none given: the "
                             "classifier's last feature map; CAM needs that one)")
    parser.add_argument("--data", default=None, help="data set of the images (none given: the run's evaluation set)")
    parser.add_argument("--data-root", default=None, help="root of --data (else its environment variable)")
    parser.add_argument("--lung-masks", type=Path, default=None,
                        help="folder of lung-mask images matched by image id (real data; phantoms bring theirs)")
    parser.add_argument("--max-images", type=int, default=256, help="images scored (the first of the split)")
    parser.add_argument("--grid", type=int, default=16, help="images shown in attention.png")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runs_dir_arg(parser)
    add_device_arg(parser)
    return parser


def _run_folder(run: str, runs_dir: Path) -> Path:
    path = Path(run)
    folder = path if path.is_dir() else runs_dir / run
    if not (folder / CLASSIFIER_FILE).is_file():
        raise UserError(f"--run {run}: no {CLASSIFIER_FILE} in {folder}; is it a finished evaluate.finetune or "
                        "adapt.train run?")
    return folder


def _check_data(choice: DataChoice, classes: tuple[str, ...], channels: int, trained_on: str) -> None:
    """``--data`` must have the classifier's classes and channels (one :class:`UserError` line otherwise)."""
    spec = get_spec(choice.name)
    if spec.schema is not None and choice.version is None:
        raise UserError(f"--data {choice.name} needs a label task, but the run trained on {trained_on} without one")
    if task_classes(choice) != classes or spec.channels != channels:
        raise UserError(f"--data {choice.name} ({', '.join(task_classes(choice))}; {spec.channels} channel(s)) does "
                        f"not fit the classifier ({', '.join(classes)}; {channels} channel(s))")


def run_evaluation_data(folder: Path) -> DataChoice:
    """The evaluation images a run recorded in its ``config.json`` (module docstring)."""
    try:
        record = json.loads((folder / CONFIG_FILE).read_text())
        if "finetune" in record:
            return FinetuneConfig.from_dict(record["finetune"]).data_choices()[1]
        return dataclass_from_dict(DataChoice, record["evaluation_data"], "evaluation data record")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the run's configuration {folder / CONFIG_FILE}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_images < 1 or args.grid < 1 or args.batch_size < 1:
        raise UserError("--max-images, --grid and --batch-size must be positive")
    device = resolve_device(args.device)
    folder = _run_folder(args.run, args.runs_dir)
    recorded = run_evaluation_data(folder)
    model, info = load_classifier(folder / CLASSIFIER_FILE, device)
    layer = args.layer or model.cam_layer
    if args.method == "cam" and (layer != model.cam_layer or model.correction):
        raise UserError(f"--method cam takes the last feature map ({model.cam_layer}) of a classifier without "
                        "correction blocks; use --method gradcam")
    if args.data is None:
        choice = recorded
    else:
        choice = DataChoice(args.data, args.data_root, recorded.version, recorded.setting, None)
        _check_data(choice, info.classes or (), info.channels, recorded.name)
    split = get_spec(choice.name).eval_split
    dataset = choice.build(split, info.image_size, augment=False)
    masks = MaskSource(dataset, choice.name, args.lung_masks, info.image_size)
    result = measure_attention(
        model, dataset, masks, method=args.method, class_of=args.class_of, max_images=args.max_images,
        batch_size=args.batch_size, keep=args.grid, device=device, progress=not args.no_progress, layer=layer,
    )
    about = {"method": args.method, "class_of": args.class_of, "layer": layer,
             "data": f"{choice.name} {split} split", "classifier": str(folder / CLASSIFIER_FILE)}
    record = write_attention(folder, result, tuple(info.classes or ()), about)
    print(f"AIL {record['ail']['mean']:.3f} +- {record['ail']['std']:.3f} over {record['images']} images -> "
          f"{folder / 'attention.json'}, {folder / 'attention.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
