"""A grid of runs: which cells, in which order, with which dependencies (data), and the executor that runs them here.

A grid is a list of :class:`Cell` records. A cell names its run folder, the
settings record that folder's ``config.json`` holds under ``section``, the
files whose presence marks it finished, the cells it needs first and the
``work`` a runner needs to run it (an ``AdaptConfig``, a ``StepConfig``...).
Nothing in a cell says where it runs: :func:`run_here` runs the cells one
after another in this process; a launcher that sends cells to a cluster
takes the same list, :func:`in_dependency_order` and :func:`check_cells`.

A cell's status (:func:`cell_status`) comes from its folder alone:

- ``finished``: every file of ``finished_files`` exists;
- ``started``: a checkpoint (``checkpoint_<it>.pt``) or ``config.json``;
- ``new``: neither.

:func:`check_cells`, called before anything is written, refuses in one
:class:`UserError` line a cell whose folder records other settings
(:func:`recorded_settings`, :func:`differing_settings`). :func:`run_here`
skips finished cells, hands started and new ones to the runner (which
resumes a started one), and keeps going past a cell that fails with a
:class:`UserError` (a diverged loss is :class:`plumbing.run_folders.RunDiverged`);
cells that need a failed cell are not run. The returned :class:`GridReport`
turns its failures into one closing line (:meth:`GridReport.raise_if_failed`);
running the same grid again resumes them, as finished cells are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from .distributed import print_on_main, world_size
from .errors import UserError
from .run_folders import CONFIG_FILE, RunDiverged
from .training import CHECKPOINT_PREFIX, checkpoints

T = TypeVar("T")
Status = Literal["finished", "started", "new"]


@dataclass(frozen=True)
class Cell(Generic[T]):
    """One run of a grid.

    ``name`` is unique within the grid (and names the cell in every message);
    ``folder`` is its run folder; ``settings`` the record that
    ``config.json`` holds under ``section`` once the cell started (JSON
    values, compared key by key); ``finished_files`` the files that mark it
    finished; ``needs`` the names of the cells that must finish before it;
    ``work`` what the runner needs to run it; ``hint`` what the one-line
    refusal of other recorded settings tells the user to do (:func:`check_settings`).
    """

    name: str
    folder: Path
    section: str
    settings: Mapping[str, Any]
    work: T
    finished_files: tuple[str, ...]
    needs: tuple[str, ...] = ()
    hint: str = "run it with its own settings or choose another --name"


def cell_status(cell: Cell[Any]) -> Status:
    """``finished``, ``started`` or ``new``, from the cell's folder (module docstring)."""
    if all((cell.folder / name).is_file() for name in cell.finished_files):
        return "finished"
    if checkpoints(cell.folder) or (cell.folder / CONFIG_FILE).is_file():
        return "started"
    return "new"


def recorded_settings(folder: Path, section: str) -> dict[str, Any] | None:
    """The ``section`` record of ``folder/config.json``: ``None`` without that file, ``{}`` when it lacks the section.

    A file that is not JSON, or not a JSON object whose section is an object,
    is one :class:`UserError` naming it.
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); remove the folder or choose another name") from None
    saved = record.get(section, {}) if isinstance(record, dict) else None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a run record (no {section!r} object); remove the folder or choose another name")
    return saved


def differing_settings(wanted: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """The keys, sorted, whose value in ``saved`` differs from ``wanted`` (a key missing from one side differs)."""
    return sorted(k for k in set(wanted) | set(saved) if k not in wanted or k not in saved or wanted[k] != saved[k])


def check_settings(cell: Cell[Any]) -> None:
    """Refuse a cell whose folder records other settings than it asks for, in one :class:`UserError` line:
    ``run FOLDER was started with other settings (KEYS); HINT``."""
    saved = recorded_settings(cell.folder, cell.section)
    differ = [] if saved is None else differing_settings(cell.settings, saved)
    if differ:
        raise UserError(f"run {cell.folder} was started with other settings ({', '.join(differ)}); {cell.hint}")


def in_dependency_order(cells: Sequence[Cell[T]]) -> list[Cell[T]]:
    """The cells with every cell after the cells it needs, otherwise in the given order.

    A name given twice, a need that names no cell of the grid or a cycle of
    needs is a programming error (``ValueError``).
    """
    by_name: dict[str, Cell[T]] = {}
    for cell in cells:
        if cell.name in by_name:
            raise ValueError(f"the grid holds two cells named {cell.name!r}")
        by_name[cell.name] = cell
    for cell in cells:
        unknown = [n for n in cell.needs if n not in by_name]
        if unknown:
            raise ValueError(f"cell {cell.name!r} needs {unknown}, which are not cells of the grid")
    ordered: list[Cell[T]] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(cell: Cell[T]) -> None:
        if cell.name in placed:
            return
        if cell.name in visiting:
            raise ValueError(f"the needs of cell {cell.name!r} form a cycle")
        visiting.add(cell.name)
        for need in cell.needs:
            place(by_name[need])
        visiting.discard(cell.name)
        placed.add(cell.name)
        ordered.append(cell)

    for cell in cells:
        place(cell)
    return ordered


def check_cells(cells: Sequence[Cell[T]]) -> list[Cell[T]]:
    """The cells in dependency order, each checked against the settings its folder records; writes nothing."""
    ordered = in_dependency_order(cells)
    for cell in ordered:
        check_settings(cell)
    return ordered


@dataclass
class GridReport:
    """What :func:`run_here` did: how many cells it was given, which failed (``diverged`` or ``failed``) and
    which were not run because a cell they need did not finish."""

    cells: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    resumable: list[str] = field(default_factory=list)
    """The failed cells whose folder (or a folder inside it, such as an SSL run's downstream) holds a checkpoint."""

    def add(self, other: GridReport) -> GridReport:
        """The report of this grid and then ``other`` (a grid planned after this one ran)."""
        return GridReport(self.cells + other.cells, self.failed | other.failed, self.blocked + other.blocked,
                          self.resumable + other.resumable)

    def raise_if_failed(self) -> None:
        """One :class:`UserError` line naming the failed cells (and those not run), when there are any:

        ``N of M cell(s) diverged|failed (names)[, K more not run as they need them (names)]; the others
        finished; ...`` - ``diverged`` when every failure is a diverged loss; the end says which cells the
        same command resumes from a checkpoint and which it starts again (those that wrote none).
        """
        if not self.failed and not self.blocked:
            return
        what = "diverged" if self.failed and all(v == "diverged" for v in self.failed.values()) else "failed"
        line = f"{len(self.failed)} of {self.cells} cell(s) {what} ({', '.join(self.failed)})"
        if self.blocked:
            line += f", {len(self.blocked)} more not run as they need them ({', '.join(self.blocked)})"
        fresh = [name for name in self.failed if name not in self.resumable]
        if not fresh:
            again = f"the same command resumes the {what} ones from their last good checkpoint"
        else:
            again = "the same command starts again those without a checkpoint" + (
                f" and resumes {', '.join(self.resumable)} from its last good checkpoint" if self.resumable else "")
        raise UserError(f"{line}; the others finished; {again}")


def run_here(
    cells: Sequence[Cell[T]],
    run_cell: Callable[[Cell[T], Status], None],
    skipped: Callable[[Cell[T]], str] = lambda cell: f"{cell.name}: finished; skipped",
) -> GridReport:
    """Run the grid in this process, in dependency order: a finished cell is skipped (the line ``skipped``
    gives), a started or new one is ``run_cell(cell, status)``.

    A :class:`UserError` from ``run_cell`` (a diverged loss included) is said
    in one line and the other cells go on; a cell that needs a failed or
    skipped-for-failure cell is not run. Any other exception (an interrupt, a
    bug) stops the grid, and so does a :class:`UserError` under several
    processes: a check that only the main process makes (writing results,
    exporting) can fail there alone while the others wait at a barrier, so the
    error ends every process, as it ends a single run. The report's :meth:`GridReport.raise_if_failed`
    ends the command.
    """
    report = GridReport(cells=len(cells))
    for cell in in_dependency_order(cells):
        missing = [n for n in cell.needs if n in report.failed or n in report.blocked]
        if missing:
            report.blocked.append(cell.name)
            print_on_main(f"{cell.name}: not run, as {', '.join(missing)} did not finish")
            continue
        status = cell_status(cell)
        if status == "finished":
            print_on_main(skipped(cell))
            continue
        try:
            run_cell(cell, status)
        except UserError as exc:
            if world_size() > 1:  # a cell's ranks may have failed apart: stop every process, as one run does
                raise
            report.failed[cell.name] = "diverged" if isinstance(exc, RunDiverged) else "failed"
            report.resumable += [cell.name] if any(cell.folder.rglob(f"{CHECKPOINT_PREFIX}_*.pt")) else []
            print_on_main(f"{cell.name}: {exc}; going on with the other cells")
    return report
