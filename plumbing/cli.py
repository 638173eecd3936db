"""Command-line conventions shared by every ``python -m ...`` entry point.

* ``--help`` shows defaults (``ArgumentDefaultsHelpFormatter``).
* ``--device`` defaults to a GPU when one is present.
* ``--runs-dir`` defaults to ``$CXR_RUNS_DIR`` or ``./runs``.
* Bad input raises :class:`plumbing.errors.UserError`; :func:`run_cli` prints it as one line on
  stderr and exits with code 2, so a caller never sees a traceback for a
  mistake in its own arguments or data.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

from .errors import UserError

RUNS_DIR_ENV = "CXR_RUNS_DIR"


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``prog: error: message`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` lists every default and whose errors fit on one line."""
    return _Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str) -> torch.device:
    """Parse a ``--device`` value, refusing a device that is not available."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a device name (use cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU but torch sees none (use --device cpu)")
    return device


def default_workers(device: torch.device) -> int:
    """DataLoader workers when none are asked for: 0 on a CPU (training uses every core), else min(8, CPUs - 1)."""
    if device.type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=default_device(),
        help="torch device (cpu, cuda, cuda:N, mps); the default is a GPU when there is one",
    )


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV, "runs"))


def add_runs_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=default_runs_dir(),
        help=f"folder that holds one sub-folder per run (environment variable {RUNS_DIR_ENV})",
    )


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and exit; a :class:`UserError` becomes one stderr line and exit code 2."""
    try:
        code = main(argv)
    except UserError as exc:
        prog = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "error"
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
