"""``bin/demo``'s chain (``bin/demo.py``): its stages are well-formed and parse with their commands' parsers, a
finished stage is skipped on the next run, a failed one names its log and passes on its exit code."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bin_demo", ROOT / "bin" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


demo = _load_demo()
RUNS = Path("/tmp/demo-runs")
"""A runs folder the chain is built for (nothing is written there)."""


def test_the_chain_is_well_formed() -> None:
    chain = demo.stages(RUNS)
    full = demo.stages(RUNS, full_store=True)
    names = [stage.name for stage in full]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[a-z][a-z-]*", name) for name in names)
    assert [s.name for s in full] == [s.name for s in chain[:-1]] + ["full-store", chain[-1].name]
    assert full[-1].argv == ("evaluate.report", str(RUNS))  # the report comes last, the full store before it
    for stage in full:
        assert stage.marks and all(mark.is_relative_to(RUNS) for mark in stage.marks), stage.name
        paths = [Path(arg) for arg in stage.argv if arg.startswith("/")]
        assert all(path.is_relative_to(RUNS) for path in paths), stage.name  # everything inside the runs folder
        if "--runs-dir" in stage.argv:
            runs_dir = Path(stage.argv[stage.argv.index("--runs-dir") + 1])
            assert runs_dir in (RUNS, RUNS / "cache", RUNS / "starts"), stage.name
        if stage.argv[0] in ("adapt.train", "ssl.curriculum", "evaluate.synthetic", "evaluate.attention"):
            assert "--no-progress" in stage.argv, stage.name


@pytest.mark.parametrize("argv", [pytest.param(stage.argv, id=stage.name) for stage in demo.stages(RUNS, True)]
                         + [pytest.param((*command, str(RUNS)), id=f"{what}-table") for what, command in demo.TABLES])
def test_every_command_parses_with_its_parser(argv: tuple[str, ...]) -> None:
    importlib.import_module(argv[0]).build_parser().parse_args(list(argv[1:]))


def _grid(folder: Path, name: str) -> demo.Stage:
    """A real and fast stage: a four-image phantom grid."""
    out = folder / f"{name}.png"
    return demo.Stage(name, f"grid {name}", ("datasets.phantom_grid", "--n", "4", "--resolution", "32", "--out",
                                             str(out)), (out,))


@pytest.mark.slow
def test_finished_stages_are_skipped_and_a_failure_names_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = _grid(tmp_path, "a"), _grid(tmp_path, "b")
    assert demo.run_chain([a], tmp_path) == 0
    assert "[1/1] grid a ... done in" in capsys.readouterr().out
    made = a.marks[0].stat().st_mtime_ns

    assert demo.run_chain([a, b], tmp_path) == 0
    out = capsys.readouterr().out
    assert "[1/2] grid a ... finished before; skipped" in out and "[2/2] grid b ... done in" in out
    assert a.marks[0].stat().st_mtime_ns == made
    record = json.loads((tmp_path / "logs" / demo.RECORD).read_text())
    assert record == {"a": list(a.argv), "b": list(b.argv)}

    a.marks[0].unlink()  # a runs again, and so does every stage after it
    assert demo.run_chain([a, b], tmp_path) == 0
    assert capsys.readouterr().out.count("done in") == 2

    bad = demo.Stage("bad", "a bad option", ("datasets.phantom_grid", "--n", "many"), (tmp_path / "never.png",))
    assert demo.run_chain([a, bad], tmp_path) == 2
    captured = capsys.readouterr()
    assert "[1/2] grid a ... finished before; skipped" in captured.out
    assert "[2/2] a bad option ... failed (exit code 2)" in captured.out
    log = tmp_path / "logs" / "bad.log"
    assert f"its output is in {log}" in captured.err and "invalid int value: 'many'" in captured.err
    assert "bad" not in json.loads((tmp_path / "logs" / demo.RECORD).read_text())


def test_help_ends_with_an_example_it_takes_and_bad_options_are_one_line_and_exit_code_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = demo.build_parser().format_help().rstrip().splitlines()
    assert lines[-2:] == ["example:", "  bin/demo --full-store"]
    assert demo.build_parser().parse_args(["--full-store"]).full_store
    with pytest.raises(SystemExit) as stop:
        demo.main(["--full-stor3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("bin/demo: error: unrecognized arguments")
