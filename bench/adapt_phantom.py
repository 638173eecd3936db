"""Does alignment work, and does prior correction fix label shift? Rows built so that a working method must show.

    python -m bench.adapt_phantom --runs-dir runs/adapt-phantom --device cpu

Every row adapts a trained source network, as the reference adapts a
pretrained one (from scratch, the MMD terms keep the classifier near chance:
the reference notes that DCAN collapses without pretraining). So each source
first gets a *start*: the ``none`` preset trained from scratch (or from a
self-supervised backbone) at ``--start-lr`` for ``--start-steps`` steps,
in ``RUNS/start/<source>-none-seed<s>``, one per seed. Every cell of a row then
starts from its seed's start (``--init`` its ``classifier.safetensors``,
batch norm trained as there) and trains ``--steps`` more steps at ``--lr``;
``none`` there is the start trained on for as many steps, the fair baseline.

Rows (target ``phantom-nih``, task v1-0s: No Finding vs Pneumothorax; every
source batch is class-balanced, so the source prior is 50/50):

* **a** - appearance shift only: ``phantom`` -> ``phantom-nih`` resampled to
  the balanced prior (``--target-prior balanced``), so source and target
  priors match. The positive control of alignment: ``ours`` should beat
  ``none`` here.
* **b** - appearance and label shift: ``phantom`` -> ``phantom-nih`` at its
  natural prior (3.6% Pneumothorax), from the same start as row a. The
  positive control of prior correction: ``ours+bbse`` / ``ours+em`` should
  beat ``ours``.
* **c** - the seed's synthetic-to-real block: a v1-0s store of the shipped
  demo generator -> ``phantom-nih`` at its natural prior.
* **d** - row c whose start was trained from a self-supervised backbone
  (``ssl.curriculum``, Relative Location on unlabelled phantoms of both
  domains) instead of from scratch.
* **e** - label shift only: labelled ``phantom-nih`` -> ``phantom-nih`` at
  its natural prior (the same scanner, so the same appearance; source and
  target images are drawn from the same training split), from the ceiling's
  start. BBSE and EM assume exactly this shift (``p(x | y)`` shared), so
  they must recover the prior here, and prior correction must beat ``ours``,
  whose marginal alignment pulls target negatives towards source positives.

Columns ``none``, ``ours``, ``ours+bbse``, ``ours+em`` (and ``dcan`` on row
b; row d without ``ours+bbse``), ``--seeds`` seeds each; every cell is one
``adapt.train`` run, and a finished cell is skipped, so the benchmark
resumes where it stopped (``--rows`` runs a part, ``--tables-only`` trains
nothing). The *ceiling* is the ``none`` preset trained on labelled
``phantom-nih`` itself (``RUNS/start/phantom-nih-none-seed<s>``, row e's
start): how far a perfect adaptation could go. Prints three tables: final-step balanced
accuracy (mean +- std over seeds, with how many seeds collapsed); the target
prior estimated by BBSE and EM at the final step against the true one; the
selection table of ``adapt.report`` (how far each label-free criterion's
choice lies from the oracle's).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plumbing.cli import make_parser, parse_list, run_cli
from plumbing.errors import UserError

from .run_module import run_module

PROG = "python -m bench.adapt_phantom"
COLUMNS = ("none", "ours", "ours+bbse", "ours+em", "dcan")
POSITIVE = "Pneumothorax"


@dataclass(frozen=True)
class Row:
    """One row of the benchmark: its source, the target prior, whether its start is self-supervised, its columns."""

    name: str
    what: str
    source: str
    target_prior: str
    ssl: bool
    columns: tuple[str, ...]

    @property
    def start(self) -> str:
        """The name of the start the row's cells begin from (``RUNS/start/<start>-none-seed<s>``)."""
        return self.source + ("-ssl" if self.ssl else "")


ROWS = {
    row.name: row for row in (
        Row("a", "appearance shift (priors matched)", "phantom", "balanced", False, COLUMNS[:4]),
        Row("b", "appearance + label shift", "phantom", "natural", False, COLUMNS),
        Row("c", "synthetic v1-0s store", "synthetic", "natural", False, COLUMNS[:4]),
        Row("d", "synthetic v1-0s store, SSL backbone", "synthetic", "natural", True, ("none", "ours", "ours+em")),
        Row("e", "label shift only", "phantom-nih", "natural", False, COLUMNS[:4]),
    )
}
CEILING = "phantom-nih"
"""The start trained on labelled target images: the ceiling of an adaptation (and row e's start)."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Adaptation on the phantom shift: alignment and prior correction against source only.",
                         example="python -m bench.adapt_phantom --rows a,b --seeds 0")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/adapt-phantom"), help="folder of every run")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows to run ({', '.join(ROWS)})")
    parser.add_argument("--store", type=Path, default=None,
                        help="a v1-0s synthetic store (default: written into --runs-dir from the demo generator)")
    parser.add_argument("--train-per-class", type=int, default=1000, help="store images per class (training split)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--start-steps", type=int, default=180, help="steps of every start (source only)")
    parser.add_argument("--start-lr", type=float, default=0.01, help="SGD learning rate of the starts' backbones")
    parser.add_argument("--steps", type=int, default=120, help="steps of every cell, from its start")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the cells' backbones")
    parser.add_argument("--eval-every", type=int, default=40, help="steps between evaluations of a cell")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--backbone", default="resnet18", help="residual backbone")
    parser.add_argument("--target-pool", type=int, default=20000,
                        help="phantom-nih adaptation images (drawn before resampling; the evaluation pool of a "
                             "resampled row too)")
    parser.add_argument("--eval-length", type=int, default=2000,
                        help="phantom-nih evaluation images of a row at its natural prior")
    parser.add_argument("--ssl-images", type=int, default=2048, help="unlabelled images of the SSL pre-training")
    parser.add_argument("--ssl-epochs", type=int, default=4, help="epochs of the SSL pretext step")
    parser.add_argument("--tables-only", action="store_true",
                        help="train nothing: print the tables of the cells finished so far")
    parser.add_argument("--device", default="cpu", help="torch device")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = [ROWS[name] if name in ROWS else _unknown_row(name) for name in parse_list(args.rows, "--rows")]
    if not args.tables_only:
        _train(args, rows)
    runs = _results(args.runs_dir)
    ceiling = _ceiling(args.runs_dir)
    for text in (accuracy_table(runs, rows), accuracy_table(runs, rows, "oracle"), prior_table(runs, rows),
                 "\n".join(verdicts(runs, rows, ceiling))):
        print(f"\n{text}")
    run_module(["adapt.report", "--runs-dir", str(args.runs_dir), "--figure", "final"])
    return 0


def _train(args: argparse.Namespace, rows: Sequence[Row]) -> None:
    """Every cell of ``rows`` not finished yet (and the store, SSL backbone and starts they need)."""
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    store = args.store or args.runs_dir / "synthetic-v1-0s.zarr"
    if any(row.source == "synthetic" for row in rows) and not store.exists():
        run_module(["synth.generate", "--version", "1", "--setting", "0s", "--out", str(store), "--train-per-class",
                    str(args.train_per_class), "--val-per-class", str(max(args.train_per_class // 5, 1)),
                    "--device", args.device])
    ssl_file = _ssl_backbone(args) if any(row.ssl for row in rows) else None
    starts = {CEILING: (CEILING, "scratch")} | {
        row.start: (row.source, str(ssl_file) if row.ssl else "scratch") for row in rows}
    for name, (source, init) in starts.items():
        _train_start(args, name, _source_args(source, store), init)
    for row in rows:
        _train_row(args, row, store)


def _unknown_row(name: str) -> Row:
    raise UserError(f"--rows: unknown row {name!r} (known: {', '.join(ROWS)})")


def _source_args(source: str, store: Path) -> list[str]:
    return ["--source", "synthetic", "--source-store", str(store)] if source == "synthetic" else ["--source", source]


def _ssl_backbone(args: argparse.Namespace) -> Path:
    """The backbone file row d's start is trained from: Relative Location on unlabelled phantoms of both domains
    (an ``ssl.curriculum`` run; its path, as the starts live in another runs folder)."""
    prefix = "ssl-backbone"
    run_module(["ssl.curriculum", "run", "--tasks", "relloc", "--no-singles", "--data", "phantom,phantom-nih",
                "--max-images", str(args.ssl_images), "--backbone", args.backbone, "--image-size",
                str(args.image_size), "--epochs", str(args.ssl_epochs), "--lr-grid", "0.01,0.05",
                "--downstream", "phantom-nih", "--version", "1", "--setting", "0s", "--length", "500",
                "--eval-length", "500", "--downstream-epochs", "1", "--downstream-lr-grid", "3e-4",
                "--monitor", "none", "--prefix", prefix, "--runs-dir", str(args.runs_dir), "--device", args.device,
                "--no-progress"])
    run = f"{prefix}-phantom-nih-v1-0s-relloc-seed0"  # ssl.curriculum's PREFIX-DOWNSTREAM-TASK-ORDERING-seedS
    backbone = args.runs_dir / run / "backbone.safetensors"
    if not backbone.is_file():
        raise UserError(f"the SSL run {args.runs_dir / run} holds no backbone.safetensors")
    return backbone.resolve()


def _target_args(args: argparse.Namespace, target_prior: str) -> list[str]:
    """The target of a row at ``target_prior``: the adaptation pool, and its evaluation images."""
    evaluation = args.target_pool if target_prior != "natural" else args.eval_length
    return ["--target", "phantom-nih", "--version", "1", "--setting", "0s", "--target-prior", target_prior,
            "--target-length", str(args.target_pool), "--eval-length", str(evaluation), "--backbone", args.backbone,
            "--image-size", str(args.image_size), "--seeds", args.seeds, "--device", args.device, "--no-progress"]


def _train_start(args: argparse.Namespace, name: str, source: list[str], init: str) -> None:
    """The start ``name``: source only from ``init``, scored on row a's target (balanced prior)."""
    run_module(["adapt.train", *source, *_target_args(args, "balanced"), "--init", init, "--batchnorm", "train",
                "--steps", str(args.start_steps), "--eval-every", str(args.start_steps), "--lr", str(args.start_lr),
                "--alignment", "none", "--name", name, "--runs-dir", str(args.runs_dir / "start")])


def _train_row(args: argparse.Namespace, row: Row, store: Path) -> None:
    """The cells of ``row``, each from its seed's start."""
    for seed in parse_list(args.seeds, "--seeds"):
        start = args.runs_dir / "start" / f"{row.start}-none-seed{seed}" / "classifier.safetensors"
        common = ["adapt.train", *_source_args(row.source, store), *_target_args(args, row.target_prior),
                  "--seeds", seed, "--init", str(start), "--batchnorm", "train", "--steps", str(args.steps),
                  "--eval-every", str(args.eval_every), "--lr", str(args.lr), "--name", f"row-{row.name}",
                  "--runs-dir", str(args.runs_dir)]
        plain = [c for c in row.columns if "+" not in c]
        corrections = [c.split("+")[1] for c in row.columns if c.startswith("ours+")]
        run_module([*common, "--alignment", ",".join(plain)])
        if corrections:
            run_module([*common, "--alignment", "ours", "--prior-correction", ",".join(corrections)])


def _results(runs_dir: Path) -> list[dict[str, Any]]:
    """Every finished cell's ``results.json`` with its benchmark row (from the folder ``row-<row>-<label>-seed<s>``)."""
    runs = []
    for path in sorted(runs_dir.glob("row-*/results.json")):
        results = json.loads(path.read_text())
        results["row"] = path.parent.name.split("-")[1]
        runs.append(results)
    return runs


def _ceiling(runs_dir: Path) -> list[float]:
    """The final-step balanced accuracy of every finished ceiling start (trained on labelled target images)."""
    paths = sorted((runs_dir / "start").glob(f"{CEILING}-none-seed*/results.json"))
    return [json.loads(path.read_text())["balanced_accuracy"] for path in paths]


def _cells(runs: Sequence[dict[str, Any]], row: str, column: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["row"] == row and r["alignment"] == column]


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {std:.3f}"


def accuracy_table(runs: Sequence[dict[str, Any]], rows: Sequence[Row], figure: str = "final") -> str:
    """Markdown: per row and column the ``figure`` balanced accuracy, mean +- std over seeds, and collapses."""
    lines = [f"Balanced accuracy on phantom-nih evaluation images ({figure} figure), mean +- std over seeds", "",
             "| row | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows:
        cells = []
        for column in COLUMNS:
            members = _cells(runs, row.name, column) if column in row.columns else []
            values = [m["figures"][figure]["balanced_accuracy"] for m in members]
            collapsed = sum(1 for m in members if m["figures"][figure]["collapsed"])
            cells.append(_mean_std(values) + (f" ({collapsed}/{len(members)} collapsed)" if collapsed else ""))
        lines.append(f"| {row.name}: {row.what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prior_table(runs: Sequence[dict[str, Any]], rows: Sequence[Row]) -> str:
    """Markdown: the Pneumothorax share of the target adaptation images, true and estimated at the final step by
    BBSE and EM from each column's network (mean +- std over seeds)."""
    lines = [f"Target prior P({POSITIVE}) at the final step: the truth (adaptation images) and the BBSE / EM "
             "estimates of each column's network, mean +- std over seeds", "",
             "| row | estimator | true | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    for row in rows:
        members = [r for r in runs if r["row"] == row.name]
        if not members:
            continue
        index = members[0]["classes"].index(POSITIVE)
        truth = _mean_std([m["target_prior"]["true_adaptation"][index] for m in members])
        for estimator in ("bbse", "em"):
            cells = [_mean_std([m["prior_estimates"][estimator][index] for m in _cells(runs, row.name, column)])
                     for column in COLUMNS]
            lines.append(f"| {row.name} | {estimator} | {truth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(runs: Sequence[dict[str, Any]], rows: Sequence[Row], ceiling: Sequence[float] = ()) -> list[str]:
    """The positive controls, one line each: alignment against source only on row a, prior correction against
    the uncorrected preset on the other rows (final-step means over seeds, and in how many seeds the method won),
    after the ceiling (balanced accuracy of the start trained on labelled target images, row a's target)."""
    def by_seed(row: str, column: str) -> dict[int, float]:
        return {m["seed"]: m["balanced_accuracy"] for m in _cells(runs, row, column)}

    lines = [f"ceiling, the source-only network trained on labelled {CEILING} (row a's target): {_mean_std(ceiling)}"]
    for row in rows:
        pairs = [("ours", "none")] if row.target_prior == "balanced" else [("ours+bbse", "ours"), ("ours+em", "ours")]
        for better, base in pairs:
            method, baseline = by_seed(row.name, better), by_seed(row.name, base)
            if not method or not baseline:
                continue
            a, b = statistics.fmean(method.values()), statistics.fmean(baseline.values())
            paired = [seed for seed in method if seed in baseline]
            wins = sum(1 for seed in paired if method[seed] > baseline[seed])
            lines.append(f"positive control, row {row.name}: {better} beats {base}? {'yes' if a > b else 'no'} "
                         f"({a:.3f} against {b:.3f}; better in {wins} of {len(paired)} seeds)")
    return lines


if __name__ == "__main__":
    run_cli(main)
