"""``python -m evaluate.report RUNS_DIR``: a static study report over the run folders of ``RUNS_DIR``.

Writes ``RUNS_DIR/report/index.html`` (``--out`` chooses the folder) and its
pages from what the run folders hold, without training anything
(:mod:`evaluate.study`): the synthetic stores (provenance, contact sheets,
quality reports), the adaptation grid (the seed's Tables 4-6 form, curves,
confusion matrices, selection and prior estimates, collapse flags), the
curricula (Tables 1 and 2, pretext curves, attention maps), the GAN runs
(label fidelity, sample grids) and every run's exact command and
configuration. The pages are plain HTML with their pictures copied beside
them: they open from disk, offline, without JavaScript. Running it again
replaces the report whole.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from evaluate.study.build import build_report
from plumbing.cli import make_parser, run_cli

PROG = "python -m evaluate.report"
REPORT_DIR = "report"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "A static HTML study report over the run folders of RUNS_DIR: stores and their "
                               "quality, adaptation grids, curricula and GAN runs, with their pictures.",
                         example="python -m evaluate.report runs/demo")
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="the folder that holds the run folders")
    parser.add_argument("--out", type=Path, default=None, help="the report's folder (default: RUNS_DIR/report)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    index = build_report(args.runs_dir, args.out or args.runs_dir / REPORT_DIR)
    print(f"study report: {index}")
    return 0


if __name__ == "__main__":
    run_cli(main)
