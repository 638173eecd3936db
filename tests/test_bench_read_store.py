"""bench.read_store: sizes it cannot run with are one error line and exit code 2 (before any store is written)."""

from __future__ import annotations

import pytest

from bench.read_store import main
from plumbing.cli import run_cli


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--n", "0"], "--n"), (["--resolutions", "64", "0"], "--resolutions"), (["--batch-size", "0"], "--batch-size"),
     (["--repeats", "0"], "--repeats"), (["--workers", "-1"], "--workers")],
)
def test_zero_sizes_are_one_line(argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*argv, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
