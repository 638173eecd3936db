"""``python -m bench.table ROWS``: print benchmark rows (:mod:`bench.rows`) as one Markdown table."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import torch

from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError

from .rows import device_name, read_rows


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.table", "Print benchmark rows as one Markdown table.",
                         example="python -m bench.table runs/bench-rows.tsv")
    parser.add_argument("rows", type=Path, help="file of tab-separated rows written with --rows-out")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    if not args.rows.is_file():
        raise UserError(f"no rows file {args.rows}")
    rows = read_rows(args.rows)
    if not rows:
        raise UserError(f"{args.rows} holds no rows")
    device = resolve_device(args.device)
    today = datetime.date.today().isoformat()
    print(f"\n{device_name(device)}, torch {torch.__version__}, {today}\n")
    print("| benchmark | what | result |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row.benchmark} | {row.what} | {_number(row.value)} {row.unit} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
