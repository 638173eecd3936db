"""Class counts of a label task on a label file (no images needed).

``python -m datasets.summary chexpert --version 3 --setting 0s --json`` prints
``{"No Finding": n0, "Pneumothorax": n1, ...}``: the number of images of the
label file (torchxrayvision's bundled training labels, or ``--csv``) that the
label-task policy (:mod:`datasets.label_tasks`) puts in each class, after the
view filter. Every data set whose spec has a label table
(:attr:`datasets.spec.DataSetSpec.label_table`) is accepted: ``phantom`` and
``phantom-nih`` read the CheXpert and NIH tables that they sample their
findings from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from plumbing.cli import make_parser, run_cli
from plumbing.errors import UserError
from plumbing.lookup import look_up

from .label_tables import FRONTAL_VIEWS, VIEWS
from .label_tasks import SETTINGS, VERSIONS, LabelTask, class_counts, parse_task
from .registry import REGISTRY
from .spec import DataSetSpec


def tabled() -> dict[str, DataSetSpec]:
    """The registered data sets that have a label table, in the registry's order."""
    return {name: spec for name, spec in REGISTRY.items() if spec.label_table is not None}


def parse_views(text: str) -> tuple[str, ...] | None:
    """``"PA,AP"`` -> ``("PA", "AP")``; ``"all"`` -> ``None`` (every view); an unknown view is refused."""
    if text.strip().lower() == "all":
        return None
    views = tuple(v.strip().upper() for v in text.split(",") if v.strip())
    if not views:
        raise UserError(f"--views {text!r} names no view; give a comma-separated list such as PA,AP or 'all'")
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise UserError(f"--views: unknown view {', '.join(unknown)}; known views: {', '.join(VIEWS)} (or 'all')")
    return views


def summarise(
    dataset: str, task: LabelTask, csv: Path | None, views: tuple[str, ...] | None
) -> tuple[dict[str, int], int]:
    """Class counts of ``task`` on the data set's label table, and the number of rows read."""
    table = look_up("data set with a label table", dataset, tabled()).read_label_table(csv, views=views)
    return class_counts(table.vectors, table.schema, task), len(table)


def format_table(
    dataset: str, task: LabelTask, counts: dict[str, int], rows: int, views: tuple[str, ...] | None
) -> str:
    """A readable table of the counts with their shares, the task total and the excluded rows."""
    total = sum(counts.values())
    width = max(len("excluded"), *(len(c) for c in counts))
    lines = [
        f"{dataset} {task.name}, views {','.join(views) if views else 'all'}: {rows:,} images read",
        f"{'class':<{width}}  {'images':>9}  {'share':>6}",
    ]
    lines += [f"{name:<{width}}  {n:>9,}  {100.0 * n / max(total, 1):>5.1f}%" for name, n in counts.items()]
    lines += [f"{'total':<{width}}  {total:>9,}", f"{'excluded':<{width}}  {rows - total:>9,}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "python -m datasets.summary", "Count the images of each class of a label task in a label file.",
                         example="python -m datasets.summary chexpert --version 3 --setting 0s")
    parser.add_argument("dataset", help=f"one of {', '.join(tabled())}")
    parser.add_argument("--version", default="3", help=f"label-task version ({', '.join(map(str, VERSIONS))})")
    parser.add_argument("--setting", default="0s", help=f"label-task setting ({', '.join(SETTINGS)})")
    parser.add_argument(
        "--csv", type=Path, default=None, help="label CSV to read instead of torchxrayvision's bundled training labels"
    )
    parser.add_argument("--views", default=",".join(FRONTAL_VIEWS), help="comma-separated views to keep, or 'all'")
    parser.add_argument("--json", action="store_true", help="print a JSON object class -> count")
    args = parser.parse_args(argv)

    task = parse_task(args.version, args.setting)
    views = parse_views(args.views)
    counts, rows = summarise(args.dataset, task, args.csv, views)
    print(json.dumps(counts) if args.json else format_table(args.dataset, task, counts, rows, views))
    return 0


if __name__ == "__main__":
    run_cli(main)
