"""The command-line conventions of :mod:`plumbing.cli`: help defaults, program names, one-line errors."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from plumbing.cli import make_parser, program_name, run_cli, user_message
from plumbing.errors import UserError

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (
    "datasets.summary",
    "datasets.phantom_grid",
    "datasets.verify",
    "datasets.assets.build_lung_masks",
    "bench.phantom",
    "bench.synth",
    "bench.read_store",
    "bench.table",
    "synth.generate",
    "synth.train",
)
MESSAGE = "chestxray8: image file /data/images/00000001_000.png could not be decoded (truncated)"


def command_main(module: str):  # noqa: ANN201 - the command's main function
    return importlib.import_module(module).main


def help_text(module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    with pytest.raises(SystemExit) as done:
        command_main(module)(["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


# --------------------------------------------------------------------------- --help and program names


def test_help_formatter_appends_a_default_only_where_the_help_states_none() -> None:
    parser = make_parser("pkg.tool", "A tool.")
    parser.add_argument("--size", type=int, default=3, help="a size")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: torch's own)")
    parser.add_argument("--name", default=None, help="a name")
    parser.add_argument("--device", default="cpu", help="a device; the default is a GPU when there is one")
    text = " ".join(parser.format_help().split())
    assert "a size (default: 3)" in text
    assert "threads (default: torch's own) --name" in text
    assert "a name --device" in text and "(default: None)" not in text
    assert "the default is a GPU when there is one" in text and "(default: cpu)" not in text


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_shows_each_default_once_and_its_python_m_name(module: str, monkeypatch, capsys) -> None:
    text = help_text(module, monkeypatch, capsys)
    assert text.startswith(f"usage: python -m {module} ")
    assert "(default: None)" not in text
    for line in text.splitlines():
        assert len(re.findall(r"\bdefault\b", line, re.IGNORECASE)) <= 1, line


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_names_itself_python_m_in_argument_errors(module: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        command_main(module)(["--no-such-option"])
    assert done.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m {module}: error: ")


def test_program_name_forms(monkeypatch) -> None:
    assert program_name("datasets.summary") == "python -m datasets.summary"
    assert program_name("python -m synth.train") == "python -m synth.train"
    main_module = types.ModuleType("__main__")
    main_module.__spec__ = types.SimpleNamespace(name="synth.generate")  # what ``python -m synth.generate`` sets
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    assert program_name("__main__") == "python -m synth.generate"
    assert program_name(None) == "python -m synth.generate"
    main_module.__spec__ = types.SimpleNamespace(name="bench.__main__")  # ``python -m bench``
    assert program_name(None) == "python -m bench"


def failing_main(argv: Sequence[str] | None = None) -> int:
    raise UserError("--n must be positive")


def test_run_cli_names_the_module_of_main(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        run_cli(failing_main, [])
    assert done.value.code == 2
    assert capsys.readouterr().err == "python -m tests.test_plumbing_cli: error: --n must be positive\n"


def test_run_cli_under_python_m_names_the_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "datasets.summary", "chexpert", "--version", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("python -m datasets.summary: error: ") and done.stderr.count("\n") == 1


# --------------------------------------------------------------------------- errors from DataLoader workers


def wrapped_user_error(message: str) -> UserError:
    """The exception torch raises in the main process for a ``UserError`` of a ``DataLoader`` worker."""
    from torch._utils import ExceptionWrapper

    try:
        raise UserError(message)
    except UserError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    try:
        wrapper.reraise()
    except UserError as exc:
        return exc
    raise AssertionError("ExceptionWrapper.reraise did not raise a UserError")


def test_user_message_of_a_wrapped_worker_error() -> None:
    exc = wrapped_user_error(MESSAGE)
    assert str(exc).startswith("Caught UserError in DataLoader worker process 0.\nOriginal Traceback")
    assert user_message(exc) == MESSAGE
    assert user_message(UserError("a: b: c")) == "a: b: c"


def test_run_cli_prints_the_original_line_of_a_wrapped_worker_error(capsys) -> None:
    def main(argv: Sequence[str] | None = None) -> int:
        raise wrapped_user_error(MESSAGE)

    with pytest.raises(SystemExit) as done:
        run_cli(main, [])
    assert done.value.code == 2
    assert capsys.readouterr().err == f"python -m tests.test_plumbing_cli: error: {MESSAGE}\n"


class FailingItems(Dataset):
    """Two items; reading item 1 is a user mistake (as a corrupt image is)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 1:
            raise UserError(MESSAGE)
        return torch.zeros(1)


def read_all_in_a_worker(argv: Sequence[str] | None = None) -> int:
    for _ in DataLoader(FailingItems(), batch_size=1, num_workers=1):
        pass
    return 0


def test_run_cli_prints_one_line_for_a_user_error_in_a_real_worker(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        run_cli(read_all_in_a_worker, [])
    assert done.value.code == 2
    assert capsys.readouterr().err == f"python -m tests.test_plumbing_cli: error: {MESSAGE}\n"
