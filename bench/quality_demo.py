"""Headline quality figures of generators' stores: label fidelity and usefulness against phantoms.

    python -m bench.quality_demo --device cpu
    python -m bench.quality_demo --generator old=old.safetensors \
        --generator new=synth/assets/phantom-demo-64.safetensors --device cpu

For every generator (``--generator NAME=PATH``; default: the shipped demo
generator), label task (``--tasks``, default v1-0s, v3-0s and v3-Xs) and
truncation (``--truncations``, default 1.0 and 0.7) it writes a store with
``python -m synth.generate`` and measures it with ``python -m
evaluate.synthetic --reference phantom``, then prints one Markdown table:
label fidelity per class (the share of each class's synthetic images that a
phantom-trained classifier assigns to it), the lowest of them, the
usefulness ratio (balanced accuracy on real held-out phantoms of a
classifier trained on the store over that of one trained on phantoms), the
Frechet distance over its floor and coverage. A generator replaced in the
repository can be measured from its history, e.g. ``git show
REV:synth/assets/phantom-demo-64.safetensors > old.safetensors``.

The classifiers trained on phantoms are shared by all stores of a task
(cached under the work folder), so the cost is one synthetic-trained
classifier per store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from datasets.label_tasks import parse_label_task
from plumbing.cli import add_device_arg, make_parser, run_cli
from plumbing.errors import UserError

from .rows import device_name

DEMO = Path(__file__).resolve().parents[1] / "synth" / "assets" / "phantom-demo-64.safetensors"


def _run(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{' '.join(args[:1])} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def _generators(values: Sequence[str]) -> dict[str, Path]:
    out = {}
    for value in values or [f"shipped={DEMO}"]:
        name, sep, path = value.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise UserError(f"--generator {value!r}: give NAME=PATH of an existing generator file")
        out[name] = Path(path)
    return out


def _tasks(text: str) -> list[tuple[int, str]]:
    tasks = [parse_label_task(item, "--tasks") for item in text.split(",")]
    return [(task.version, task.setting) for task in tasks]


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.quality_demo", "Label fidelity and usefulness of generators' stores.",
                         example="python -m bench.quality_demo --generator demo=gen.safetensors")
    parser.add_argument("--generator", action="append", default=[], help="NAME=PATH of a generator (repeatable)")
    parser.add_argument("--tasks", default="v1-0s,v3-0s,v3-Xs", help="label tasks, comma-separated")
    parser.add_argument("--truncations", default="1.0,0.7", help="truncation psi values, comma-separated")
    parser.add_argument("--per-class", type=int, default=500, help="training images per class of each store")
    parser.add_argument("--images", type=int, default=1000, help="synthetic images measured per store")
    parser.add_argument("--train-images", type=int, default=2000, help="training images of each classifier")
    parser.add_argument("--backbone", default="resnet18", help="classifier backbone")
    parser.add_argument("--epochs", type=int, default=3, help="classifier epochs")
    parser.add_argument("--work", type=Path, default=None, help="work folder (stores, reports, cached classifiers)")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    generators = _generators(args.generator)
    tasks = _tasks(args.tasks)
    try:
        truncations = [float(t) for t in args.truncations.split(",")]
    except ValueError:
        raise UserError(f"--truncations {args.truncations!r}: give numbers such as 1.0,0.7") from None
    work = args.work or Path(tempfile.mkdtemp(prefix="quality-demo-"))
    rows = []
    for name, path in generators.items():
        for version, setting in tasks:
            for psi in truncations:
                tag = f"{name}-v{version}-{setting}-psi{psi:g}"
                store = work / f"{tag}.zarr"
                print(f"{tag}: generating and measuring", file=sys.stderr)
                if not (store / "zarr.json").is_file():
                    _run(["synth.generate", "--generator", str(path), "--version", str(version), "--setting",
                          setting, "--truncation", str(psi), "--train-per-class", str(args.per_class),
                          "--val-per-class", "50", "--out", str(store), "--device", args.device])
                report = work / f"{tag}.quality"
                _run(["evaluate.synthetic", str(store), "--reference", "phantom", "--out", str(report),
                      "--images", str(args.images), "--train-images", str(args.train_images), "--backbone",
                      args.backbone, "--epochs", str(args.epochs), "--runs-dir", str(work / "runs"),
                      "--no-progress", "--device", args.device])
                figures = json.loads((report / "quality.json").read_text())
                rows.append((name, f"v{version}-{setting}", psi, figures))
    print(f"\nMeasured on {device_name(torch.device(args.device))}; reports under {work}\n")
    print("| generator | task | psi | label fidelity per class | lowest | usefulness ratio | FD / floor | coverage |")
    print("|---|---|---|---|---|---|---|---|")
    for name, task, psi, figures in rows:
        agreement = figures["label_fidelity"]["agreement"]
        per_class = ", ".join(f"{c} {v:.2f}" for c, v in agreement.items() if v is not None)
        lowest = min(v for v in agreement.values() if v is not None)
        cover = figures["coverage"]["all"].get("synthetic") or {}
        ratio = figures["usefulness"]["ratio"]
        fd = figures["fidelity"]["all"].get("ratio_to_floor")
        print(f"| {name} | {task} | {psi:g} | {per_class} | {lowest:.2f} | "
              f"{'-' if ratio is None else f'{ratio:.2f}'} | {'-' if fd is None else f'{fd:.1f}'} | "
              f"{cover.get('coverage', float('nan')):.2f} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
