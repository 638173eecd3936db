"""plumbing.run_folders: run names, start or resume without side effects, the record of commands, given options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plumbing.cli import make_parser
from plumbing.errors import UserError
from plumbing.run_folders import (
    RESULTS_FILE,
    check_run_name,
    given_options,
    open_run,
    read_run_results,
    record_config,
    refuse_changed_options,
    run_name_or,
)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", " padded", "a\\b"])
def test_run_names_must_be_one_plain_folder(name: str) -> None:
    with pytest.raises(UserError, match="one plain folder name"):
        check_run_name(name)
    assert check_run_name("gan-phantom-64") == "gan-phantom-64"


def test_open_creates_nothing_and_discard_removes_an_unstarted_folder(tmp_path: Path) -> None:
    run = open_run(tmp_path, "r", resume=False)
    assert not run.path.exists() and not run.resumed
    run.create()
    (run.path / "config.json").write_text("{}")
    run.discard()
    assert not run.path.exists()
    run = open_run(tmp_path, "kept", resume=False)
    run.create()
    torch.save({"x": torch.zeros(1)}, run.path / "checkpoint_3.pt")
    run.discard()  # a checkpoint was written: the folder stays
    assert (run.path / "checkpoint_3.pt").is_file()
    with pytest.raises(UserError, match="already holds a run"):
        open_run(tmp_path, "kept", resume=False)


def test_resume_reads_the_newest_readable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    torch.save({"step": 2}, folder / "checkpoint_2.pt")
    (folder / "checkpoint_4.pt").write_bytes(b"damaged")
    run = open_run(tmp_path, "r", resume=True)
    assert run.checkpoint_path == folder / "checkpoint_2.pt" and run.checkpoint == {"step": 2}
    assert "checkpoint_4.pt" in capsys.readouterr().err
    (folder / "checkpoint_2.pt").write_bytes(b"damaged too")
    with pytest.raises(UserError, match="can be read"):
        open_run(tmp_path, "r", resume=True)


def test_record_keeps_the_command_and_appends_resume_commands(tmp_path: Path) -> None:
    run = open_run(tmp_path, "r", resume=False)
    run.create()
    first = record_config(run, {"training": {"lr": 1.0}}, "python -m x --lr 1")
    torch.save({"step": 1}, run.path / "checkpoint_1.pt")
    resumed = open_run(tmp_path, "r", resume=True)
    second = record_config(resumed, first, "python -m x --resume")
    assert second["command"] == "python -m x --lr 1" and second["resumed_with"] == ["python -m x --resume"]
    assert json.loads((run.path / "config.json").read_text()) == second


def test_given_options_ignore_defaults() -> None:
    parser = make_parser("python -m x", "test", example="python -m x")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("--name", default=None)
    assert given_options(parser, []) == set()
    assert given_options(parser, ["--lr", "0.1", "--flag"]) == {"lr", "flag"}
    refuse_changed_options({"lr"}, {"lr": 0.1, "name": "a"}, {"lr": 0.1, "name": "b"})
    with pytest.raises(UserError, match="--lr 0.2 \\(the run has 0.1\\)"):
        refuse_changed_options({"lr"}, {"lr": 0.2}, {"lr": 0.1})


def test_an_empty_name_is_refused_not_replaced_by_the_default() -> None:
    assert run_name_or(None, "adapt-phantom") == "adapt-phantom"
    assert run_name_or("mine", "adapt-phantom") == "mine"
    with pytest.raises(UserError, match="^--name '' must be one plain folder name"):
        run_name_or("", "adapt-phantom")
    with pytest.raises(UserError, match="^--prefix '../../x' must be one plain folder name"):
        check_run_name("../../x", "--prefix")


def _results(runs: Path, name: str, text: str, config: dict | None = None) -> Path:
    (runs / name).mkdir(parents=True)
    if config is not None:
        (runs / name / "config.json").write_text(json.dumps(config))
    (runs / name / RESULTS_FILE).write_text(text)
    return runs / name / RESULTS_FILE


def _read(runs: Path) -> list[dict]:
    return read_run_results(runs, lambda r: r.get("trained_by") == "me", "mine", lambda r: "figure" in r)


@pytest.mark.parametrize("text", ['{"trained_by": "me", "figure": 0.5', "[]", "", '"a string"'])
def test_a_results_file_that_is_no_json_object_is_named(tmp_path: Path, text: str) -> None:
    _results(tmp_path, "good", json.dumps({"trained_by": "me", "figure": 0.9}))
    damaged = _results(tmp_path, "bad", text)
    with pytest.raises(UserError, match=f"^{damaged} is damaged: it cannot be read as a JSON object"):
        _read(tmp_path)


def test_results_of_this_program_lacking_figures_are_named_and_others_left_out(tmp_path: Path) -> None:
    _results(tmp_path, "good", json.dumps({"trained_by": "me", "figure": 0.9}))
    _results(tmp_path, "other", json.dumps({"trained_by": "someone else"}), config={"theirs": {}})
    assert [r["run"] for r in _read(tmp_path)] == ["good"]
    emptied = _results(tmp_path, "emptied", "{}", config={"mine": {}})  # ours by its config.json
    with pytest.raises(UserError, match=f"^{emptied} is damaged: it lacks figures"):
        _read(tmp_path)
    emptied.write_text(json.dumps({"trained_by": "me"}))  # ours by its content
    (emptied.parent / "config.json").unlink()
    with pytest.raises(UserError, match=f"^{emptied} is damaged"):
        _read(tmp_path)

