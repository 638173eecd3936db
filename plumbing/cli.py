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
  ``DataLoader`` worker included: :func:`user_message`). Ctrl-C is one
  ``interrupted`` line and exit code 130, also where torch re-raises it as
  another error (:func:`interrupted`).
* Option checks are lists of ``(condition, message)`` (:func:`check_options`);
  comma-separated values go through :func:`parse_list` / :func:`parse_seeds`
  (no empty item, no value twice, no negative seed); folders a command writes
  into are checked by :func:`check_output_folder` before anything is written;
  ``--workers`` left out is :func:`workers_for` the device.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import torch

from .errors import DataRoleError, UserError

RUNS_DIR_ENV = "CXR_RUNS_DIR"
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_STATES_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``prog: error: message`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to an option's help, except for a ``None`` default or help that states one;
    the description and the epilog are wrapped line by line, so an epilog's lines (the example) stay lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            super(DefaultsHelpFormatter, self)._fill_text(line, width, indent + " " * (len(line) - len(line.lstrip())))
            if line.strip() else "" for line in text.splitlines()
        )

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


def make_parser(prog: str, description: str, *, example: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` lists the defaults, ends with ``example`` (one command line) and
    whose errors fit on one line.

    ``prog`` is the command's module (``datasets.summary``) or its full
    ``python -m datasets.summary`` form; usage lines show the latter.
    """
    return _Parser(prog=program_name(prog), description=description, epilog=example_epilog(example),
                   formatter_class=DefaultsHelpFormatter)


def example_epilog(example: str, before: str = "") -> str:
    """The ``--help`` epilog: ``before`` (lines kept as written), then ``example:`` and the command line."""
    return f"{before}\n\n" * bool(before) + f"example:\n  {example}"


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


def workers_for(requested: int | None, device: torch.device) -> int:
    """The ``--workers`` value: ``requested`` when given, else :func:`default_workers` of ``device``."""
    return requested if requested is not None else default_workers(device)


def check_options(checks: Iterable[tuple[bool, str]]) -> None:
    """Refuse the options with the message of the first ``(condition, message)`` whose condition is false.

    Raises :class:`UserError` (one line: ``message``); nothing when every condition holds.
    """
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def parse_list(text: str, option: str, convert: Callable[[str], T] = str, what: str = "values") -> list[T]:
    """``text`` split at commas, each item stripped and passed through ``convert``.

    Refused in one :class:`UserError` line naming ``option``: an empty item
    (``0,,1``, a leading or trailing comma, an empty value), an item that
    ``convert`` rejects with ``ValueError`` (``what`` says what was expected),
    and a value given twice.
    """
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise UserError(f"{option} {text!r} has an empty item: give {what}, separated by single commas")
    try:
        values = [convert(item) for item in items]
    except ValueError:
        raise UserError(f"{option} {text!r} must be comma-separated {what}") from None
    if len(set(values)) != len(values):
        raise UserError(f"{option} {text!r} names a value twice")
    return values


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """Comma-separated seeds (:func:`parse_list`): non-negative integers, each once."""
    seeds = tuple(parse_list(text, option, int, "non-negative integers"))
    if any(seed < 0 for seed in seeds):
        raise UserError(f"{option} {text!r} must hold non-negative integers")
    return seeds


def check_output_folder(path: Path, option: str, given: Path | None = None) -> Path:
    """``path``, a folder a command will create or write into, checked before anything is written.

    Refused in one :class:`UserError` line naming ``option`` and its value
    ``given`` (default ``path``; a file's option gives the file, whose folder
    is ``path``) when ``path`` or the nearest of its ancestors that exists is
    not a folder (a regular file stands in the way). Folders that do not exist
    yet are fine: the command creates them.
    """
    given = path if given is None else given
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "is a file" if part == given else f"cannot be written: {part} is a file"
                raise UserError(f"{option} {given} {where}, not a folder")
            return path
    return path


@contextlib.contextmanager
def data_options(options: Mapping[str, str]) -> Iterator[None]:
    """Name this command's option in a :class:`DataRoleError` raised inside the block.

    ``options`` maps the roles of the command's data sets (``"train"``,
    ``"evaluation"``, ``"evaluation_data"``, ...) to the option that gives
    each (``--eval-root``); an error of a role not in ``options`` passes on
    unchanged (it reads ``--data-root``).
    """
    try:
        yield
    except DataRoleError as exc:
        if exc.role not in options:
            raise
        raise exc.named(options[exc.role]) from None


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
    except BaseException as exc:  # Ctrl-C, also where torch re-raises it as another error; the rest passes on
        if not interrupted(exc):
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C: a ``KeyboardInterrupt``, or an error raised while one was handled.

    Torch turns an interrupt inside ``torch.save`` into ``RuntimeError(... unexpected pos ...)``
    whose ``__context__`` is the ``KeyboardInterrupt``; any exception with a
    ``KeyboardInterrupt`` in its ``__cause__`` / ``__context__`` chain counts.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
