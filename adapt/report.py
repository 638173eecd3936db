"""``python -m adapt.report``: the adaptation runs as the seed's Tables 4-6 (Markdown, CSV or JSON).

One row per (target, source, task, backbone, image size, steps, alignment)
over every finished ``adapt.train`` run in ``--runs-dir`` (runs differing in
anything else than the seed are never averaged together): the balanced accuracy on the target evaluation set
as mean +- standard deviation over seeds (sample standard deviation; 0 for
one seed), the seeds, and the collapse flag (how many seeds ended with one
class taking over 95% of the target predictions). Rows are sorted by target,
best mean first. ``--figure`` picks the reported figure: the final step's
(default), one chosen by a label-free criterion, or the oracle (chosen by
target labels; an upper bound, not a result).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapt.cells import TRAINED_BY, complete_results
from plumbing.cli import add_runs_dir_arg, make_parser, run_cli
from plumbing.errors import UserError
from plumbing.run_folders import read_run_results

from .selection import CRITERIA

PROG = "python -m adapt.report"
FORMATS = ("markdown", "csv", "json")
SETTINGS = ("target", "source", "task", "backbone", "image_size", "steps", "alignment")
COLUMNS = (*SETTINGS, "balanced_accuracy", "std", "seeds", "collapsed")


def read_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """The ``results.json`` of every finished adaptation run directly inside ``runs_dir``; a damaged one of an
    adaptation run (or one whose program cannot be told) is one :class:`UserError` naming it."""
    return read_run_results(runs_dir, lambda results: results.get("trained_by") == TRAINED_BY, "adapt",
                            complete_results)


def table(runs: Sequence[dict[str, Any]], figure: str = "final") -> list[dict[str, Any]]:
    """One row per setting (:data:`SETTINGS`): mean and std of ``figure`` over seeds, best first per target."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[tuple(run.get(k) for k in SETTINGS)].append(run)
    rows = []
    for key, members in groups.items():
        values = [m["figures"][figure]["balanced_accuracy"] for m in members]
        collapsed = sum(1 for m in members if m["figures"][figure]["collapsed"])
        rows.append({
            **dict(zip(SETTINGS, key, strict=True)),
            "balanced_accuracy": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": sorted(m["seed"] for m in members),
            "collapsed": collapsed,
        })
    return sorted(rows, key=lambda r: (r["target"], -r["balanced_accuracy"], str(r["source"]), r["alignment"]))


def render(rows: Sequence[dict[str, Any]], fmt: str, figure: str) -> str:
    if fmt == "json":
        return json.dumps({"figure": figure, "rows": list(rows)}, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row | {"seeds": " ".join(map(str, row["seeds"]))})
        return out.getvalue().rstrip("\n")
    lines = [f"Balanced accuracy on the target evaluation set ({figure.replace('_', ' ')} figure), "
             "mean +- std over seeds", "",
             "| target | source | task | backbone | px | steps | alignment | balanced accuracy | seeds | collapsed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        collapsed = f"yes ({r['collapsed']}/{len(r['seeds'])})" if r["collapsed"] else "no"
        settings = " | ".join(str(r[k]) for k in SETTINGS)
        lines.append(f"| {settings} | {r['balanced_accuracy']:.4f} +- {r['std']:.4f} | "
                     f"{', '.join(map(str, r['seeds']))} | {collapsed} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "The adaptation runs' balanced accuracy per target, source and alignment "
                               "(mean +- std over seeds, collapse flags), best first.")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format")
    parser.add_argument("--figure", choices=tuple(CRITERIA), default="final",
                        help="final step | label-free choice (source_validation, information_maximisation) | "
                             "oracle (chosen by target labels: an upper bound)")
    add_runs_dir_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = read_runs(args.runs_dir)
    if not runs:
        raise UserError(f"no finished adapt.train run in {args.runs_dir}; train some with python -m adapt.train")
    print(render(table(runs, args.figure), args.format, args.figure))
    return 0


if __name__ == "__main__":
    run_cli(main)
