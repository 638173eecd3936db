"""Command-line conventions shared by every ``python -m ...`` entry point.

* Programs are named ``python -m package.module`` in usage lines and error
  prefixes alike (:func:`program_name`, :func:`make_parser`).
* ``--help`` shows defaults (:class:`DefaultsHelpFormatter`): a value's
  default is appended unless it is ``None`` or the help text already states
  the default.
* ``--device`` defaults to a GPU when one is present.
* ``--runs-dir`` defaults to ``$CXR_RUNS_DIR`` or ``./runs``.
* Bad input raises :class:`plumbing.errors.UserError`; :func:`run_cli` prints it as one line on
  stderr and exits with code 2, so a caller never sees a traceback for a
  mistake in its own arguments or data (a ``UserError`` raised in a
  ``DataLoader`` worker included: :func:`user_message`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

from .errors import UserError

RUNS_DIR_ENV = "CXR_RUNS_DIR"
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_STATES_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``prog: error: message`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to an option's help, except for a ``None`` default or help that states one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or _STATES_DEFAULT.search(text):
            return action.help
        return super()._get_help_string(action)


def program_name(module: str | None = None) -> str:
    """``python -m package.module`` for a module name (``None``: the running ``__main__`` module).

    A name that is not a dotted module name (it already reads ``python -m ...``)
    is returned unchanged. The running module's name comes from
    ``__main__.__spec__`` (set by ``python -m``); a script run by path is named
    by its file name.
    """
    if module is None or module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None or not spec.name:
            return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        module = spec.name.removesuffix(".__main__")
    return f"python -m {module}" if _MODULE_NAME.fullmatch(module) else module


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` lists the defaults and whose errors fit on one line.

    ``prog`` is the command's module (``datasets.summary``) or its full
    ``python -m datasets.summary`` form; usage lines show the latter.
    """
    return _Parser(prog=program_name(prog), description=description, formatter_class=DefaultsHelpFormatter)


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


def add_run_args(
    parser: argparse.ArgumentParser, group: argparse._ArgumentGroup, *, name_help: str, resume_help: str, seed: int,
    seed_help: str,
) -> None:
    """The options of every trainer: ``--name``, ``--resume``, ``--seed``, ``--no-progress`` (in ``group``),
    ``--runs-dir`` and ``--device``."""
    group.add_argument("--name", default=None, help=name_help)
    group.add_argument("--resume", action="store_true", help=resume_help)
    group.add_argument("--seed", type=int, default=seed, help=seed_help)
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runs_dir_arg(parser)
    add_device_arg(parser)


def user_message(exc: UserError) -> str:
    """The one-line message of ``exc``.

    A ``DataLoader`` worker's exception reaches the main process re-raised by
    ``torch._utils.ExceptionWrapper`` as ``type(exc)("Caught ... in DataLoader
    worker process N.\\nOriginal Traceback ...\\n<module>.<Type>: <message>")``;
    the original message is the text after the type on the last line.
    """
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().rsplit("\n", 1)[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and exit; a :class:`UserError` becomes one stderr line and exit code 2.

    The line reads ``python -m package.module: error: message``, the module
    being the one that defines ``main`` (:func:`program_name`).
    """
    try:
        code = main(argv)
    except UserError as exc:
        print(f"{program_name(getattr(main, '__module__', None))}: error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
