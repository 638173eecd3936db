"""Starting or resuming a run folder, the same way for every trainer.

A trainer's command calls, in this order:

1. :func:`open_run` - checks the run name (one plain folder name inside
   ``--runs-dir``), refuses a fresh start over an existing run and, with
   ``resume``, reads the newest readable checkpoint (a damaged newer one is
   skipped with a warning naming it). It creates nothing, so a start that
   fails on a later check leaves no folder behind.
2. the trainer's own checks (data set, options), then :meth:`RunFolder.create`.
3. :func:`record_config` - writes ``config.json`` with the run's configuration,
   the exact command and, for a resumed run, every resume command.
4. training inside :meth:`RunFolder.discarded_on_failure`: if it fails before
   its first checkpoint, :meth:`RunFolder.discard` removes the folder a fresh
   start made, so nothing is left for a later ``--resume`` to trip over, and a
   diverged loss becomes one :class:`RunDiverged` line (a :class:`UserError`).

:func:`given_options` and :func:`refuse_changed_options` let a resumed run
refuse options that contradict its checkpoint.

Under several processes (:mod:`plumbing.distributed`) every rank opens the run
and reads the checkpoint; only rank 0 creates, records and discards the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .distributed import is_main_process, print_on_main
from .errors import UserError
from .files import write_json_atomic
from .training import TrainingDiverged, checkpoints, load_checkpoint

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
"""A finished run's figures (every program's run folder holds one once it finished)."""


def check_run_name(name: str, option: str = "--name") -> str:
    """``name`` if it is one plain folder name (not empty, no separators, not ``.`` or ``..``, no surrounding
    blanks), else a :class:`UserError` naming ``option`` (the option the name or its prefix came from)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip() or "\0" in name:
        raise UserError(f"{option} {name!r} must be one plain folder name inside --runs-dir (no '/', '.' or '..')")
    return name


class RunDiverged(UserError):
    """A run whose loss diverged: one line as every :class:`UserError`, told apart by a grid
    (:mod:`plumbing.grid`) that names its diverged cells."""


def run_name_or(given: str | None, default: str, option: str = "--name") -> str:
    """The run name (or name prefix) ``given`` by ``option`` (checked: :func:`check_run_name`), else ``default``.

    An empty ``given`` is refused, never replaced by the default.
    """
    return default if given is None else check_run_name(given, option)


@dataclass
class RunFolder:
    """A run folder about to be started or resumed (:func:`open_run`)."""

    path: Path
    checkpoint_path: Path | None
    checkpoint: dict[str, Any] | None
    made: tuple[Path, ...] = ()
    """The folders :meth:`create` made, the run folder first, then the parents it had to make."""

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None

    def create(self) -> None:
        """Create the folder (after every check has passed; rank 0 only)."""
        if not is_main_process():
            return
        missing = tuple(p for p in (self.path, *self.path.parents) if not p.is_dir())
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {self.path}: {exc.strerror or exc}") from exc
        self.made = missing

    def discard(self) -> None:
        """Remove the folder if this start created it and no checkpoint was written into it, and then the parent
        folders the start made (such as ``ssl-steps/``) that are left empty."""
        if not self.made or self.resumed or checkpoints(self.path):
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.made[1:]:
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()

    @contextlib.contextmanager
    def discarded_on_failure(self, what: str = "") -> Iterator[None]:
        """Discard the folder (:meth:`discard`) when the block fails; a diverged loss is a :class:`RunDiverged`
        whose message starts with ``what``."""
        try:
            yield
        except TrainingDiverged as exc:
            self.discard()
            raise RunDiverged(f"{what}{exc}") from None
        except BaseException:
            self.discard()
            raise


def newest_readable_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that loads, skipping (with a warning) damaged newer ones."""
    found = checkpoints(run_dir)
    if not found:
        raise UserError(f"--resume: no checkpoint in {run_dir}")
    skipped: list[str] = []
    for path in reversed(found):
        try:
            checkpoint = load_checkpoint(path)
        except UserError as exc:
            skipped.append(f"{path.name} ({exc})")
            continue
        for note in skipped:
            print_on_main(f"warning: skipped the unreadable checkpoint {note}; resuming from {path.name}")
        return path, checkpoint
    raise UserError(f"--resume: no checkpoint in {run_dir} can be read; the newest: {skipped[0]}")


def open_run(runs_dir: Path, name: str, resume: bool) -> RunFolder:
    """Check a start (``resume=False``) or resume of ``runs_dir/name``; creates nothing.

    A folder that already holds checkpoints is refused without ``resume`` so a
    new run never mixes with an old one; ``resume`` without a readable
    checkpoint is refused too.
    """
    path = runs_dir / check_run_name(name)
    if resume:
        checkpoint_path, checkpoint = newest_readable_checkpoint(path)
        return RunFolder(path, checkpoint_path, checkpoint)
    if checkpoints(path):
        raise UserError(f"run folder {path} already holds a run; pass --resume to continue it or choose another --name")
    return RunFolder(path, None, None)


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command as typed: ``prog`` and the arguments (``sys.argv[1:]`` when ``argv`` is ``None``)."""
    return f"{prog} {shlex.join(sys.argv[1:] if argv is None else list(argv))}".rstrip()


def record_config(run: RunFolder, config: dict[str, Any], command: str) -> dict[str, Any]:
    """Write ``config.json``: ``config`` with ``command`` (a fresh start) or ``command`` appended to ``resumed_with``.

    Returns the record (kept by the trainer in its checkpoints); only rank 0 writes the file.
    """
    record = dict(config)
    if run.resumed:
        record["resumed_with"] = [*record.get("resumed_with", []), command]
    else:
        record["command"] = command
    if not is_main_process():
        return record
    try:
        write_json_atomic(run.path / CONFIG_FILE, record)
    except OSError as exc:
        raise UserError(f"cannot write {run.path / CONFIG_FILE}: {exc.strerror or exc}") from exc
    return record


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the options given on the command line (not left at their defaults)."""
    namespace = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if value is not _UNSET}


def refuse_changed_options(given: set[str], wanted: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    """Refuse, in one line, options given on a resume whose value differs from the checkpoint's.

    ``wanted`` maps option destinations to the values this command asks for,
    ``saved`` to the values of the run being resumed.
    """
    changed = [k for k in sorted(given & set(wanted)) if wanted[k] != saved.get(k)]
    if changed:
        parts = ", ".join(f"--{k.replace('_', '-')} {wanted[k]} (the run has {saved.get(k)})" for k in changed)
        raise UserError(f"--resume keeps the run's settings; these options differ from them: {parts}")


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`UserError` that says why it cannot be had otherwise (unreadable,
    not valid JSON, not an object), naming the file."""
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(f"{path.name} is not valid JSON ({exc}); a write was interrupted?") from None
    if not isinstance(value, dict):
        raise UserError(f"{path.name} holds no JSON object")
    return value


def _json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing, unreadable or not an object."""
    try:
        return read_json_object(path)
    except UserError:
        return None


def read_results_file(path: Path, complete: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
    """The results object in ``path`` (a run folder's ``results.json``).

    Raises :class:`UserError` naming the file when it cannot be read, is not
    valid JSON (a truncated write), is not a JSON object, or ``complete``
    refuses it (a key a table needs is missing): a damaged file is never
    taken for a missing one, nor left out of a table without a word.
    """
    return _checked_results(path, _json_object(path), complete)


def _checked_results(
    path: Path, results: dict[str, Any] | None, complete: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """``results`` (read from ``path``), or the :class:`UserError` of :func:`read_results_file`."""
    if results is None or not complete(results):
        what = "cannot be read as a JSON object" if results is None else "lacks figures a finished run records"
        raise UserError(f"{path} is damaged: it {what}; remove it (or its run folder) and run the run again")
    return results


def read_run_results(
    runs_dir: Path, accept: Callable[[dict[str, Any]], bool], marker: str,
    complete: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """The ``results.json`` of every run folder directly inside ``runs_dir`` that one program wrote, each with
    ``"run"``: its folder's name.

    A file is this program's when ``accept`` takes its content or the
    folder's ``config.json`` records ``marker`` (the program's configuration
    key); other programs' results are left out. A file that cannot be read as
    a JSON object (whose it is cannot be told), or one of this program's that
    ``complete`` refuses, is one :class:`UserError` naming it
    (:func:`read_results_file`): a table is never printed without it.
    """
    found = []
    for path in sorted(runs_dir.glob(f"*/{RESULTS_FILE}")):
        results = read_results_file(path)
        config = _json_object(path.parent / CONFIG_FILE) or {}
        if accept(results) or marker in config:
            found.append(_checked_results(path, results, lambda r: accept(r) and complete(r))
                         | {"run": path.parent.name})
    return found
