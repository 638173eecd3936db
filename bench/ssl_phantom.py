"""Evidence on phantoms: scratch, each single pretext task, and the Curriculum and Anti-Curriculum pairs of the
three best single tasks, over seeds.

    python -m bench.ssl_phantom --runs-dir runs/ssl-phantom --device cpu
    python -m bench.ssl_phantom --runs-dir runs/ssl-phantom --seeds 0     # one part; --seeds 1,2 later resumes

1. ``python -m ssl.curriculum run --tasks none``: the scratch baseline (the
   downstream training alone) for every seed.
2. ``--tasks TASKS --orderings all --max-length 1``: every single task for
   every seed. Each step is watched by the k-NN monitor (the downstream
   task's class-balanced training images), which also chooses its learning
   rate from ``--lr-grid``.
3. The three single tasks with the best mean downstream figure
   (``--label-by``, the fine-tune's by default) over every single-task run
   in ``--runs-dir`` (which holds one benchmark's runs), then ``--tasks
   A,B,C --orderings all --max-length 2`` for every seed those runs have:
   their six two-task orderings, each a Curriculum (C: the single tasks'
   figures rise along it) or an Anti-Curriculum (AC). First steps are the
   singles' steps, not trained again. A later part that changes the three
   best thus also gives the earlier seeds the new pairs.
4. The runs table (``python -m ssl.curriculum runs``: k-NN, linear probe
   and fine-tune balanced accuracy and AIL per ordering, mean +- std over
   seeds), whether each single task's monitor k-NN rose clearly (by
   :data:`CLEAR_RISE`) above its random start on every seed, and what the
   table says about the seed's claims: curricula against the best single
   task, C against AC orderings of the same tasks, and the AIL of
   SSL-pretrained backbones against scratch.

Every figure is on phantom v3-0s. The pretext steps and their monitor see
``--image-size`` pixels (32 by default: 256 images, 8 epochs of batch 32,
the 64 steps at which every task but Rotation raised the monitor's k-NN in
its learning test); the downstream runs, their k-NN and linear probes and
AIL see ``--downstream-image-size`` (128: the backbone pools globally, so
its weights serve both sizes). AIL is Grad-CAM of the predicted class at
the backbone's last feature map (16 x 16 for ``tiny`` at 128 px),
upsampled to the image, against the exact lung masks. With the defaults
three seeds took about 2 h 10 min on 2 CPU cores beside other work, so run
it seed by seed (a part under an hour). A finished run is skipped, so the
benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plumbing.cli import make_parser, run_cli
from ssl.table import FIGURES, figure, read_runs, table

from .run_module import run_module

PROG = "python -m bench.ssl_phantom"
TASKS = "relloc,rotation,moco,swav,odc"
BEST = 3
CLEAR_RISE = 0.03
"""The monitor's k-NN balanced accuracy after the last epoch must exceed the start's by this much on every seed."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Curricular SSL on phantoms: scratch, single tasks, and the Curriculum and "
                               "Anti-Curriculum pairs of the best three, over seeds.",
                         example="python -m bench.ssl_phantom --runs-dir runs/ssl-phantom --seeds 0")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ssl-phantom"), help="folder of every run")
    parser.add_argument("--tasks", default=TASKS, help="pretext tasks")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--backbone", default="tiny", help="backbone architecture")
    parser.add_argument("--image-size", type=int, default=32, help="image side of the pretext steps and the monitor")
    parser.add_argument("--downstream-image-size", type=int, default=128,
                        help="image side of the downstream runs, their probes and AIL")
    parser.add_argument("--max-images", type=int, default=256, help="unlabelled phantom images of the pretext steps")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every pretext step")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch of the pretext steps")
    parser.add_argument("--lr-grid", default="0.03,0.1", help="SGD learning rates tried per pretext step")
    parser.add_argument("--length", type=int, default=1000, help="downstream training images")
    parser.add_argument("--eval-length", type=int, default=500, help="downstream evaluation images")
    parser.add_argument("--downstream-epochs", type=int, default=4, help="downstream epochs")
    parser.add_argument("--downstream-lr", default="1e-3", help="downstream AdamW learning rate(s)")
    parser.add_argument("--label-by", choices=FIGURES, default="finetune",
                        help="the figure that ranks the single tasks and labels the orderings")
    parser.add_argument("--device", default="cpu", help="torch device")
    return parser


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def best_singles(runs: Sequence[Mapping[str, Any]], tasks: Sequence[str], by: str, k: int = BEST) -> list[str]:
    """The ``k`` tasks whose single-task runs have the highest mean ``by`` figure (ties by name)."""
    means = {t: _mean([v for r in runs if r["tasks"] == [t] and (v := figure(r, by)) is not None]) for t in tasks}
    ranked = sorted((t for t, m in means.items() if m is not None), key=lambda t: (-(means[t] or 0.0), t))
    return ranked[:k]


def knn_rises(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per single task, the monitor's k-NN rise of its step on every seed: last epoch's value minus the start's."""
    rises: dict[str, list[float]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r["seed"]):
        if len(run["tasks"]) == 1 and run["steps"] and run["steps"][0].get("knn_start") is not None:
            step = run["steps"][0]
            rises[run["tasks"][0]].append(step["epoch_knn"][-1] - step["knn_start"])
    return dict(rises)


def claims(rows: Sequence[Mapping[str, Any]], by: str) -> list[str]:
    """What the table's rows (one settings group) say about curricula, orderings and attention."""
    key = "balanced_accuracy" if by == "finetune" else by
    value = {r["ordering"]: r[key] for r in rows if r[key] is not None}
    singles = {o: v for o, v in value.items() if ">" not in o and o != "none"}
    pairs = {o: v for o, v in value.items() if ">" in o}
    label = {r["ordering"]: r["label"] for r in rows}
    out = []
    if singles and pairs:
        single, pair = max(singles, key=singles.get), max(pairs, key=pairs.get)
        verdict = "beats" if pairs[pair] > singles[single] else "does not beat"
        out.append(f"Best curriculum {pair} ({label[pair]}, {pairs[pair]:.3f}) {verdict} the best single task "
                   f"{single} ({singles[single]:.3f}).")
    c_wins, compared = 0, 0
    for first, second in {tuple(sorted(o.split(">"))) for o in pairs}:
        forward, backward = f"{first}>{second}", f"{second}>{first}"
        if forward in pairs and backward in pairs and {label[forward], label[backward]} == {"C", "AC"}:
            c, ac = (forward, backward) if label[forward] == "C" else (backward, forward)
            compared += 1
            c_wins += pairs[c] > pairs[ac]
    if compared:
        out.append(f"The Curriculum ordering beats the Anti-Curriculum ordering of the same two tasks in "
                   f"{c_wins} of {compared} pairs.")
    ail = {r["ordering"]: r["ail"] for r in rows if r["ail"] is not None}
    if "none" in ail and len(ail) > 1:
        pretrained = [v for o, v in ail.items() if o != "none"]
        higher = sum(v > ail["none"] for v in pretrained)
        out.append(f"AIL: scratch {ail['none']:.3f}; SSL-pretrained {statistics.fmean(pretrained):.3f} on average, "
                   f"higher than scratch for {higher} of {len(pretrained)} orderings.")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common = ["ssl.curriculum", "run", "--data", "phantom", "--max-images", str(args.max_images),
              "--downstream", "phantom", "--version", "3", "--setting", "0s", "--length", str(args.length),
              "--eval-length", str(args.eval_length), "--backbone", args.backbone, "--image-size",
              str(args.image_size), "--downstream-image-size", str(args.downstream_image_size),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--lr-grid", args.lr_grid, "--downstream-epochs", str(args.downstream_epochs),
              "--downstream-lr-grid", args.downstream_lr, "--label-by", args.label_by,
              "--runs-dir", str(args.runs_dir), "--device", args.device, "--no-progress"]
    tasks = [t for t in args.tasks.split(",") if t]
    run_module([*common, "--seeds", args.seeds, "--tasks", "none"])
    run_module([*common, "--seeds", args.seeds, "--tasks", ",".join(tasks), "--orderings", "all", "--max-length", "1"])
    singles = [r for r in read_runs(args.runs_dir) if len(r["tasks"]) == 1]
    best = best_singles(singles, tasks, args.label_by)
    if len(best) > 1:
        seeds = ",".join(str(seed) for seed in sorted({r["seed"] for r in singles}))
        run_module([*common, "--seeds", seeds, "--tasks", ",".join(best), "--orderings", "all", "--max-length", "2"])
    run_module(["ssl.curriculum", "runs", "--runs-dir", str(args.runs_dir), "--label-by", args.label_by])
    runs = read_runs(args.runs_dir)
    print(f"\nThe three best single tasks by {args.label_by}: {', '.join(best)}.")
    print(f"\nMonitor k-NN balanced accuracy after the last pretext epoch minus the random start's, per seed "
          f"(clear: above {CLEAR_RISE} on every seed)\n")
    print("| task | rise per seed | clear |\n|---|---|---|")
    for task, rises in sorted(knn_rises(runs).items()):
        clear = "yes" if all(r > CLEAR_RISE for r in rises) else "no"
        print(f"| {task} | {', '.join(f'{r:+.3f}' for r in rises)} | {clear} |")
    for group, rows in table(runs, args.label_by).items():
        print(f"\n{group}:")
        for line in claims(rows, args.label_by):
            print(f"- {line}")
    return 0


if __name__ == "__main__":
    run_cli(main)
