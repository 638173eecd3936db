"""Benchmark results as rows that several benchmark commands append to one file.

Each benchmark command takes ``--rows-out FILE`` and appends one tab-separated
line per measurement: ``benchmark``, ``what``, ``value``, ``unit``.
``python -m bench.table FILE`` prints them as one Markdown table headed by the
device's name and the torch version (``bench/gpu.sh`` does so).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Row:
    benchmark: str
    what: str
    value: float
    unit: str


def add_rows_out_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rows-out", type=Path, default=None, help="also append the results as tab-separated rows to this file"
    )


def append_rows(path: Path | None, rows: list[Row]) -> None:
    """Append ``rows`` to ``path`` (nothing when ``path`` is ``None``)."""
    if path is None:
        return
    with open(path, "a", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for row in rows:
            writer.writerow([row.benchmark, row.what, repr(float(row.value)), row.unit])


def read_rows(path: Path) -> list[Row]:
    with open(path, newline="") as f:
        return [Row(b, w, float(v), u) for b, w, v, u in csv.reader(f, delimiter="\t")]


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``CPU (N threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
