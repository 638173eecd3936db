"""``python -m adapt.report``: the adaptation runs as the seed's Tables 4-6 (Markdown, CSV or JSON).

One row per (target, source, task, backbone, image size, steps, backbone
start, target prior, alignment) over every finished ``adapt.train`` run in ``--runs-dir`` (runs differing in
anything else than the seed are never averaged together): the balanced accuracy on the target evaluation set
as mean +- standard deviation over seeds (sample standard deviation; 0 for
one seed), the seeds, and the collapse flag (how many seeds ended with one
class taking over 95% of the target predictions). Rows are sorted by target,
best mean first. ``--figure`` picks the reported figure: the final step's
(default), one chosen by a label-free criterion (:data:`adapt.selection.CRITERIA`),
or the oracle (chosen by target labels; an upper bound, not a result). A run
without target labels, or without the asked figure, counts in no mean (a
row with none shows ``n/a``).

After that table comes the *selection table*
(:func:`adapt.selection.selection_gaps`): for every label-free criterion,
the mean and worst gap between the balanced accuracy of the evaluation it
chose and the oracle's, over the runs with target labels, best first; and
the same per group of runs (:data:`GROUP_SETTINGS`, the settings but the
alignment) when there are several. Markdown prints every table, JSON holds
them all, CSV prints the one ``--table`` names.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapt.cells import TRAINED_BY, complete_results
from plumbing.cli import add_runs_dir_arg, make_parser, run_cli
from plumbing.errors import UserError
from plumbing.run_folders import read_run_results

from .selection import CRITERIA, selection_gaps

PROG = "python -m adapt.report"
FORMATS = ("markdown", "csv", "json")
TABLES = ("main", "selection", "selection-groups")
SETTINGS = ("target", "source", "task", "backbone", "image_size", "steps", "init", "target_prior", "alignment")
COLUMNS = (*SETTINGS, "balanced_accuracy", "std", "seeds", "collapsed")
GROUP_SETTINGS = tuple(k for k in SETTINGS if k != "alignment")
GAP_COLUMNS = ("criterion", "mean_gap", "worst_gap", "runs")


def read_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """The ``results.json`` of every finished adaptation run directly inside ``runs_dir``; a damaged one of an
    adaptation run (or one whose program cannot be told) is one :class:`UserError` naming it."""
    return read_run_results(runs_dir, lambda results: results.get("trained_by") == TRAINED_BY, "adapt",
                            complete_results)


def table(runs: Sequence[dict[str, Any]], figure: str = "final") -> list[dict[str, Any]]:
    """One row per setting (:data:`SETTINGS`): mean and std of ``figure`` over the seeds that have it (``None``
    without any), best first per target."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[tuple(setting(run, k) for k in SETTINGS)].append(run)
    rows = []
    for key, members in groups.items():
        figures = [m["figures"][figure] for m in members if figure in m["figures"]]
        values = [f["balanced_accuracy"] for f in figures if f["balanced_accuracy"] is not None]
        rows.append({
            **dict(zip(SETTINGS, key, strict=True)),
            "balanced_accuracy": statistics.fmean(values) if values else None,
            "std": (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None,
            "seeds": sorted(m["seed"] for m in members),
            "collapsed": sum(1 for f in figures if f["collapsed"]),
        })
    return sorted(rows, key=lambda r: (r["target"], -_number(r["balanced_accuracy"]), str(r["source"]),
                                       r["alignment"]))


def setting(run: dict[str, Any], key: str) -> Any:
    """One setting of a run's ``results.json``: ``init`` is the backbone's start (``scratch``, ``ssl:RUN``, ...)
    and ``target_prior`` the asked ``--target-prior`` (``natural`` for runs that predate it)."""
    value = run.get(key)
    if key == "init":
        return value.get("init") if isinstance(value, dict) else value
    if key == "target_prior":
        return value.get("asked") if isinstance(value, dict) else "natural"
    return value


def _number(value: float | None) -> float:
    return -math.inf if value is None else value


def selection_groups(runs: Sequence[dict[str, Any]], settings: Sequence[str] = ()) -> list[dict[str, Any]]:
    """:func:`adapt.selection.selection_gaps` over the histories of the runs of each group of equal ``settings``
    (one group of every run without settings), rows ``{**settings, **gap_row}`` in sorted group order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[tuple(setting(run, k) for k in settings)].append(run)
    return [dict(zip(settings, key, strict=True)) | row
            for key in sorted(groups, key=lambda key: tuple(map(str, key)))
            for row in selection_gaps([run.get("history") or [] for run in groups[key]])]


def render(rows: Sequence[dict[str, Any]], fmt: str, figure: str, selection: Sequence[dict[str, Any]] = (),
           by_group: Sequence[dict[str, Any]] = (), which: str = "main") -> str:
    """The tables in ``fmt``: Markdown every table (the per-group one when it has several groups), JSON every
    table, CSV the one ``which`` names (:data:`TABLES`)."""
    if fmt == "json":
        return json.dumps({"figure": figure, "rows": list(rows), "selection": list(selection),
                           "selection_groups": list(by_group)}, indent=2)
    if fmt == "csv":
        columns, chosen = {"main": (COLUMNS, rows), "selection": (GAP_COLUMNS, selection),
                           "selection-groups": ((*GROUP_SETTINGS, *GAP_COLUMNS), by_group)}[which]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in chosen:
            writer.writerow(row | ({"seeds": " ".join(map(str, row["seeds"]))} if "seeds" in row else {}))
        return out.getvalue().rstrip("\n")
    lines = [f"Balanced accuracy on the target evaluation set ({figure.replace('_', ' ')} figure), "
             "mean +- std over seeds", "",
             "| target | source | task | backbone | px | steps | init | target prior | alignment | balanced accuracy | "
             "seeds | collapsed |", "|---" * 12 + "|"]
    for r in rows:
        collapsed = f"yes ({r['collapsed']}/{len(r['seeds'])})" if r["collapsed"] else "no"
        settings = " | ".join(str(r[k]) for k in SETTINGS)
        accuracy = "n/a" if r["balanced_accuracy"] is None else f"{r['balanced_accuracy']:.4f} +- {r['std']:.4f}"
        lines.append(f"| {settings} | {accuracy} | {', '.join(map(str, r['seeds']))} | {collapsed} |")
    lines += ["", *_gap_lines(selection, ())]
    if len({tuple(r[k] for k in GROUP_SETTINGS) for r in by_group}) > 1:
        lines += ["", *_gap_lines(by_group, GROUP_SETTINGS)]
    return "\n".join(lines)


def _gap_lines(rows: Sequence[dict[str, Any]], settings: Sequence[str]) -> list[str]:
    if not rows:
        return ["Selection table: no finished run records a history with target labels, so no criterion can be "
                "compared with the oracle."]
    head = "".join(f" {'px' if k == 'image_size' else k.replace('_', ' ')} |" for k in settings)
    lines = [f"Selection table{' per group' if settings else ''}: balanced accuracy of the oracle's evaluation "
             "(best by target labels) minus that of each label-free criterion's choice, over the runs with target "
             "labels, best first", "",
             f"|{head} criterion | mean gap | worst gap | runs |", "|---" * (len(settings) + 4) + "|"]
    for r in rows:
        cells = "".join(f" {r[k]} |" for k in settings)
        lines.append(f"|{cells} {r['criterion']} | {r['mean_gap']:.4f} | {r['worst_gap']:.4f} | {r['runs']} |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "The adaptation runs' balanced accuracy per target, source and alignment "
                               "(mean +- std over seeds, collapse flags), best first.",
                         example="python -m adapt.report --runs-dir runs --format csv")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format")
    parser.add_argument("--figure", choices=tuple(CRITERIA), default="final",
                        help="final step | the choice of a label-free criterion (source_validation, "
                             "information_maximisation, snd, dev, bnm, target_entropy) | oracle (chosen by target "
                             "labels: an upper bound)")
    parser.add_argument("--table", choices=TABLES, default="main",
                        help="the table --format csv prints: main, selection (each criterion's gap to the oracle) "
                             "or selection-groups (the same per group of runs)")
    add_runs_dir_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = read_runs(args.runs_dir)
    if not runs:
        raise UserError(f"no finished adapt.train run in {args.runs_dir}; train some with python -m adapt.train")
    print(render(table(runs, args.figure), args.format, args.figure, selection_groups(runs),
                 selection_groups(runs, GROUP_SETTINGS), args.table))
    return 0


if __name__ == "__main__":
    run_cli(main)
