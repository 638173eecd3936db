"""Benchmark commands (finetune, ssl, attention_shortcut): sizes they cannot run with are one error line, exit 2."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from bench.attention_shortcut import main as shortcut_main
from bench.finetune import main as finetune_main
from bench.ssl import main as ssl_main
from plumbing.cli import run_cli


@pytest.mark.parametrize(
    ("main", "argv", "named"),
    [(finetune_main, ["--steps", "0"], "--steps"), (finetune_main, ["--repeats", "0"], "--repeats"),
     (finetune_main, ["--store-images", "8", "--batch-size", "16"], "--store-images"),
     (ssl_main, ["--tasks", "moco,nope"], "--tasks"), (ssl_main, ["--images", "64", "--batch-size", "64"], "--images"),
     (shortcut_main, ["--seeds", "0"], "--seeds"), (shortcut_main, ["--shortcut", "1.5"], "--shortcut")],
)
def test_bad_sizes_are_one_line(
    main: Callable[[Sequence[str] | None], int], argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*argv, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
