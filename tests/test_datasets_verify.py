"""``python -m datasets.verify``: an ok line and exit 0, or one line naming the damaged blocks and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.verify import main
from plumbing.cli import run_cli
from tests.test_synthetic_store import write_store


def verify(store: Path | str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(store)])
    return exit_info.value.code


def test_complete_store_is_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    write_store(store)
    assert verify(store) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"ok: {store}: 4 blocks (train 40, val 10 images) match their checksums"]


def test_damaged_blocks_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    write_store(store)
    images = store / "train" / "images" / "c"
    (images / "1" / "0" / "0" / "0").write_bytes((images / "0" / "0" / "0" / "0").read_bytes())  # decodes, wrong bytes
    (images / "2" / "0" / "0" / "0").write_bytes((images / "2" / "0" / "0" / "0").read_bytes()[:50])  # truncated
    (store / "val" / "labels" / "c" / "0").unlink()
    assert verify(store) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # beside the progress bar
    assert len(err) == 1, err
    assert str(store) in err[0] and "train block 1 (does not match its checksum)" in err[0]
    assert "train block 2 (images unreadable" in err[0] and "val block 0 (labels chunk missing)" in err[0]


def test_not_a_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(tmp_path / "nothing.zarr") == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_no_progress_leaves_only_the_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    write_store(store)
    images = store / "train" / "images" / "c"
    (images / "2" / "0" / "0" / "0").write_bytes((images / "2" / "0" / "0" / "0").read_bytes()[:50])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(store), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m datasets.verify: error: ") and "\r" not in err
