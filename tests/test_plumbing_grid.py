"""plumbing.grid with small fake cells (no training): status, skip, resume, refusal, failures, dependency order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plumbing.errors import UserError
from plumbing.grid import (
    Cell,
    GridReport,
    Status,
    cell_status,
    check_cells,
    differing_settings,
    in_dependency_order,
    recorded_settings,
    run_here,
)
from plumbing.run_folders import RunDiverged
from plumbing.training import TrainingDiverged


def _cell(runs: Path, name: str, needs: tuple[str, ...] = (), **settings: object) -> Cell[str]:
    return Cell(name=name, folder=runs / name, section="fake", settings={"lr": 0.1, **settings}, work=name,
                finished_files=("results.json",), needs=needs)


def _started(cell: Cell[str], settings: dict | None = None) -> None:
    cell.folder.mkdir(parents=True, exist_ok=True)
    (cell.folder / "config.json").write_text(json.dumps({"fake": dict(cell.settings if settings is None
                                                                      else settings), "command": "x"}))


def _finished(cell: Cell[str]) -> None:
    _started(cell)
    (cell.folder / "results.json").write_text("{}")


class Recorder:
    """A runner that records what it is asked to run, fails the cells named in ``fail`` and finishes the others."""

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.calls: list[tuple[str, Status]] = []
        self.fail = fail or {}

    def __call__(self, cell: Cell[str], status: Status) -> None:
        self.calls.append((cell.name, status))
        if cell.name in self.fail:
            raise self.fail[cell.name]
        _finished(cell)


def test_status_comes_from_the_folder(tmp_path: Path) -> None:
    cell = _cell(tmp_path, "a")
    assert cell_status(cell) == "new"
    cell.folder.mkdir()
    assert cell_status(cell) == "new"  # an empty folder holds nothing of a run
    torch.save({}, cell.folder / "checkpoint_2.pt")
    assert cell_status(cell) == "started"
    (cell.folder / "checkpoint_2.pt").unlink()
    _started(cell)
    assert cell_status(cell) == "started"
    (cell.folder / "results.json").write_text("{}")
    assert cell_status(cell) == "finished"


def test_finished_cells_are_skipped_and_started_ones_handed_on_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done, started, new = _cell(tmp_path, "done"), _cell(tmp_path, "started"), _cell(tmp_path, "new")
    _finished(done)
    _started(started)
    runner = Recorder()
    report = run_here(check_cells([done, started, new]), runner)
    assert runner.calls == [("started", "started"), ("new", "new")]
    assert "done: finished; skipped" in capsys.readouterr().err
    report.raise_if_failed()  # nothing failed: no error
    runner = Recorder()
    run_here([done, started, new], runner, skipped=lambda c: f"{c.work}: reused")
    assert runner.calls == [] and capsys.readouterr().err.count(": reused") == 3


def test_a_cell_recorded_with_other_settings_is_refused_in_one_line(tmp_path: Path) -> None:
    ok, changed = _cell(tmp_path, "ok"), _cell(tmp_path, "changed", steps=3)
    _finished(ok)
    _started(changed, {"lr": 0.1, "steps": 2, "gone": 1})
    with pytest.raises(UserError, match=r"changed was started with other settings \(gone, steps\); run it with") as e:
        check_cells([ok, changed])
    assert "\n" not in str(e.value)
    _finished(_cell(tmp_path, "finished", steps=1))
    with pytest.raises(UserError, match=r"other settings \(steps\)"):  # a finished cell is compared too
        check_cells([_cell(tmp_path, "finished", steps=2)])
    assert differing_settings({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
    assert differing_settings({"a": 1}, {"a": None, "b": 0}) == ["a", "b"]


def test_the_settings_reader(tmp_path: Path) -> None:
    assert recorded_settings(tmp_path, "fake") is None  # no config.json: nothing recorded
    (tmp_path / "config.json").write_text(json.dumps({"other": {"x": 1}}))
    assert recorded_settings(tmp_path, "fake") == {}
    (tmp_path / "config.json").write_text(json.dumps({"fake": {"x": 1}}))
    assert recorded_settings(tmp_path, "fake") == {"x": 1}
    (tmp_path / "config.json").write_text('{"fake": ')
    with pytest.raises(UserError, match="config.json cannot be read"):
        recorded_settings(tmp_path, "fake")
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(UserError, match="is not a run record"):
        recorded_settings(tmp_path, "fake")


def test_a_failed_cell_does_not_stop_the_others_and_is_named_at_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = [_cell(tmp_path, n) for n in ("a", "b", "c")]
    runner = Recorder({"a": RunDiverged("loss total became nan at iteration 1")})
    report = run_here(cells, runner)
    assert [name for name, _ in runner.calls] == ["a", "b", "c"]
    assert "a: loss total became nan at iteration 1; going on with the other cells" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^1 of 3 cell\(s\) diverged \(a\); the others finished") as e:
        report.raise_if_failed()
    assert "\n" not in str(e.value)
    runner = Recorder({"a": UserError("no data root")})  # the same command resumes the failed cell
    report = run_here(cells, runner)
    with pytest.raises(UserError, match=r"^1 of 3 cell\(s\) failed \(a\)"):
        report.raise_if_failed()
    report = run_here(cells, Recorder())
    report.raise_if_failed()
    assert all(cell_status(c) == "finished" for c in cells)


def test_anything_but_a_user_error_stops_the_grid(tmp_path: Path) -> None:
    cells = [_cell(tmp_path, n) for n in ("a", "b")]
    for error in (KeyboardInterrupt(), TrainingDiverged("raw, outside a run folder"), RuntimeError("a bug")):
        runner = Recorder({"a": error})
        with pytest.raises(type(error)):
            run_here(cells, runner)
        assert runner.calls == [("a", "new")]


def test_dependency_order_and_cells_needing_a_failed_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    step1, step2 = _cell(tmp_path, "s1"), _cell(tmp_path, "s2", needs=("s1",))
    run, other = _cell(tmp_path, "run", needs=("s1", "s2")), _cell(tmp_path, "other")
    given = [run, other, step2, step1]
    assert [c.name for c in in_dependency_order(given)] == ["s1", "s2", "run", "other"]
    runner = Recorder({"s1": UserError("damaged images")})
    report = run_here(given, runner)
    assert [name for name, _ in runner.calls] == ["s1", "other"]  # s2 and run need s1
    err = capsys.readouterr().err
    assert "s2: not run, as s1 did not finish" in err and "run: not run, as s1, s2 did not finish" in err
    with pytest.raises(UserError, match=r"1 of 4 cell\(s\) failed \(s1\), 2 more not run as they need them "
                                        r"\(s2, run\)"):
        report.raise_if_failed()
    runner = Recorder()
    run_here(given, runner).raise_if_failed()  # the same grid again: only what did not finish runs
    assert [name for name, _ in runner.calls] == ["s1", "s2", "run"]


@pytest.mark.parametrize(("cells", "message"), [
    ([("a", ()), ("a", ())], "two cells named 'a'"),
    ([("a", ("z",))], "not cells of the grid"),
    ([("a", ("b",)), ("b", ("a",))], "form a cycle"),
])
def test_a_malformed_grid_is_a_programming_error(
    tmp_path: Path, cells: list[tuple[str, tuple[str, ...]]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        in_dependency_order([_cell(tmp_path, name, needs) for name, needs in cells])


def test_reports_of_two_grids_add_up() -> None:
    report = GridReport(2, {"a": "diverged"}).add(GridReport(3, {"b": "failed"}, ["c"]))
    with pytest.raises(UserError, match=r"2 of 5 cell\(s\) failed \(a, b\), 1 more not run"):
        report.raise_if_failed()
