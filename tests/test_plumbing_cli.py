"""The command-line conventions of :mod:`plumbing.cli`: help defaults, program names, one-line errors."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from plumbing.cli import (
    check_options,
    check_output_folder,
    data_options,
    interrupted,
    make_parser,
    parse_list,
    parse_seeds,
    program_name,
    run_cli,
    user_message,
    workers_for,
)
from plumbing.errors import OPTION, DataRoleError, UserError
from plumbing.lr_selection import parse_lr_grid

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
EVERY_COMMAND = (
    *COMMANDS, "adapt.report", "adapt.train", "bench.adapt", "bench.adapt_phantom", "bench.attention_shortcut",
    "bench.finetune", "bench.quality_demo", "bench.readme_pictures", "bench.ssl", "bench.ssl_phantom",
    "evaluate.attention", "evaluate.finetune", "evaluate.report", "evaluate.synthetic", "ssl.curriculum",
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
    parser = make_parser("pkg.tool", "A tool.", example="python -m pkg.tool --size 4")
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


@pytest.mark.parametrize("module", EVERY_COMMAND)
def test_every_commands_help_ends_with_an_example_its_parser_takes(module: str, monkeypatch, capsys) -> None:
    lines = help_text(module, monkeypatch, capsys).rstrip().splitlines()
    assert lines[-2] == "example:" and lines[-1].startswith(f"  python -m {module} "), lines[-2:]
    build = getattr(importlib.import_module(module), "build_parser", None)
    if build is not None:  # the commands whose parser can be had without running them
        build().parse_args(shlex.split(lines[-1])[3:])


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


# --------------------------------------------------------------------------- option scaffolding


def test_check_options_raises_the_first_failed_message() -> None:
    check_options([(True, "never")])
    with pytest.raises(UserError, match="^second$"):
        check_options([(True, "first"), (False, "second"), (False, "third")])


@pytest.mark.parametrize("text", ["0,,1", ",0", "0,", "", " , "])
def test_list_options_refuse_empty_items(text: str) -> None:
    with pytest.raises(UserError, match="has an empty item"):
        parse_list(text, "--tasks")
    with pytest.raises(UserError, match="--seeds .* has an empty item"):
        parse_seeds(text)


def test_list_options_convert_strip_and_refuse_twice_and_bad_values() -> None:
    assert parse_list(" rotation, moco ", "--tasks") == ["rotation", "moco"]
    assert parse_list("0.1,0.2", "--lr-grid", float) == [0.1, 0.2]
    assert parse_seeds("2,0,1") == (2, 0, 1)
    with pytest.raises(UserError, match="names a value twice"):
        parse_list("a,a", "--tasks")
    with pytest.raises(UserError, match="must be comma-separated non-negative integers"):
        parse_seeds("0,x")
    with pytest.raises(UserError, match="--seeds '-1' must hold non-negative integers"):
        parse_seeds("-1")


def test_lr_grid_refuses_empty_items() -> None:
    with pytest.raises(UserError, match="--lr-grid '0.1,,0.2' has an empty item"):
        parse_lr_grid("0.1,,0.2")
    with pytest.raises(UserError, match="--downstream-lr-grid"):
        parse_lr_grid("0.1,-1", "--downstream-lr-grid")


def test_output_folders_under_a_file_are_one_line(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert check_output_folder(tmp_path / "new" / "runs", "--runs-dir") == tmp_path / "new" / "runs"
    with pytest.raises(UserError, match=f"^--runs-dir {file} is a file, not a folder$"):
        check_output_folder(file, "--runs-dir")
    with pytest.raises(UserError, match=f"^--runs-dir {file}/a/b cannot be written: {file} is a file"):
        check_output_folder(file / "a" / "b", "--runs-dir")
    with pytest.raises(UserError, match=f"^--out {file}/q.png cannot be written: {file} is a file"):
        check_output_folder(file, "--out", file / "q.png")


def test_workers_default_only_when_not_given() -> None:
    assert workers_for(3, torch.device("cpu")) == 3
    assert workers_for(None, torch.device("cpu")) == 0


def test_data_role_errors_name_the_commands_option() -> None:
    error = DataRoleError(f"chexpert: no data root given; pass {OPTION} or set CHEXPERT_ROOT")
    assert str(error) == "chexpert: no data root given; pass --data-root or set CHEXPERT_ROOT"
    with pytest.raises(UserError, match="^chexpert: no data root given; pass --eval-root or"):
        with data_options({"train": "--data-root", "evaluation": "--eval-root"}):
            raise error.in_role("evaluation")
    assert error.in_role("train").in_role("evaluation").role == "train"  # the innermost role stays
    with pytest.raises(DataRoleError, match="pass --data-root"):  # a role the command does not map
        with data_options({"train": "--downstream-root"}):
            raise error.in_role("reference")


# --------------------------------------------------------------------------- Ctrl-C


def save_interrupted(*args: object, **kwargs: object) -> None:
    """What torch.save raises when Ctrl-C arrives while it writes: a RuntimeError whose context is the interrupt."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None


def test_an_interrupt_surfacing_as_another_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        save_interrupted()
    except RuntimeError as exc:
        assert interrupted(exc) and exc.__cause__ is None
    assert not interrupted(RuntimeError("unexpected pos"))

    def main(argv: Sequence[str] | None = None) -> int:
        save_interrupted()
        return 0

    with pytest.raises(SystemExit) as done:
        run_cli(main, [])
    assert done.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"

    def fails(argv: Sequence[str] | None = None) -> int:
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):  # other errors keep their traceback
        run_cli(fails, [])
