"""The ``python -m datasets.summary`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datasets.label_tables import read_nih_table
from datasets.label_tasks import class_counts, label_task, parse_task
from datasets.summary import main, parse_views
from plumbing.errors import UserError

REPO = Path(__file__).resolve().parents[1]
NIH_CSV = "\n".join(
    [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]",
        "00000001_000.png,Pneumothorax,0,1,57,M,PA,2682,2749,0.143,0.143",
        "00000001_001.png,Pneumothorax|Effusion,1,1,58,M,AP,2894,2729,0.143,0.143",
        "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
        "00000003_000.png,No Finding,0,3,81,F,LL,2500,2048,0.171,0.171",
        "00000004_000.png,Mass,0,4,40,F,PA,2500,2048,0.171,0.171",
    ]
)


def run_summary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datasets.summary", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def nih_csv(tmp_path: Path) -> Path:
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(NIH_CSV + "\n")
    return path


def test_json_counts_from_csv(nih_csv: Path) -> None:
    done = run_summary("chestxray8", "--version", "1", "--setting", "Xs", "--csv", str(nih_csv), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"No Finding": 1, "Pneumothorax": 2}


def test_json_counts_from_bundled_file() -> None:
    done = run_summary("phantom-nih", "--version", "v3", "--setting", "0s", "--json")
    assert done.returncode == 0, done.stderr
    table = read_nih_table()
    assert json.loads(done.stdout) == class_counts(table.vectors, table.schema, label_task(3, "0s"))


def test_bad_input_is_one_line_and_exit_2() -> None:
    done = run_summary("chexpert", "--version", "4")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "valid versions: 1, 2, 3" in lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("mimic",), "chexpert, chestxray8, phantom, phantom-nih"),
        (("chexpert", "--csv", "/no/such/train.csv"), "/no/such/train.csv does not exist"),
        (("chestxray8", "--setting", "both"), "0s, Xs"),
    ],
)
def test_bad_input_is_a_user_error(args: tuple[str, ...], needle: str) -> None:
    with pytest.raises(UserError, match=needle) as info:
        main(list(args))
    assert "\n" not in str(info.value)


def test_readable_table(nih_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chestxray8", "--version", "2", "--setting", "0s", "--csv", str(nih_csv), "--views", "all"]) == 0
    text = capsys.readouterr().out
    assert "chestxray8 v2-0s, views all: 5 images read" in text
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert lines["Finding"][0] == "2" and lines["total"] == ["4"] and lines["excluded"] == ["1"]
    assert text.splitlines()[2].startswith("No Finding") and "50.0%" in text.splitlines()[2]


def test_argument_parsing() -> None:
    assert parse_views("all") is None and parse_views(" pa, AP ") == ("PA", "AP")
    assert parse_task("v2", "xs") == label_task(2, "Xs")
    with pytest.raises(UserError, match="no view"):
        parse_views(" , ")
    with pytest.raises(UserError, match="not a version"):
        parse_task("three", "0s")


def test_unknown_view_is_refused_with_the_known_ones(nih_csv: Path) -> None:
    with pytest.raises(UserError) as info:
        main(["chestxray8", "--csv", str(nih_csv), "--views", "PA,XX", "--json"])
    assert str(info.value) == "--views: unknown view XX; known views: PA, AP, LL, RL, L, UNKNOWN (or 'all')"
    assert parse_views("pa,ll") == ("PA", "LL")
