"""bench.adapt_phantom: its tables and positive-control verdicts over finished cells (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.adapt_phantom import ROWS, _ceiling, _results, accuracy_table, main, prior_table, verdicts
from plumbing.cli import run_cli

CLASSES = ["No Finding", "Pneumothorax"]


def _cell(runs: Path, row: str, label: str, seed: int, accuracy: float, estimate: float) -> None:
    figure = {"balanced_accuracy": accuracy, "collapsed": "No Finding" if accuracy < 0.55 else None}
    results = {"alignment": label, "seed": seed, "classes": CLASSES, "balanced_accuracy": accuracy,
               "figures": {"final": figure, "oracle": figure},
               "prior_estimates": {"bbse": [1 - estimate, estimate], "em": [1 - estimate / 2, estimate / 2]},
               "target_prior": {"asked": "natural", "true_adaptation": [0.96, 0.04]}}
    folder = runs / f"row-{row}-{label}-seed{seed}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))


def test_tables_and_verdicts_from_finished_cells(tmp_path: Path) -> None:
    for seed in (0, 1):
        _cell(tmp_path, "a", "none", seed, 0.70, 0.5)
        _cell(tmp_path, "a", "ours", seed, 0.60 + 0.02 * seed, 0.5)
        _cell(tmp_path, "b", "ours", seed, 0.50, 0.3)
        _cell(tmp_path, "b", "ours+em", seed, 0.65, 0.1)
    runs = _results(tmp_path)
    rows = [ROWS["a"], ROWS["b"]]
    table = accuracy_table(runs, rows)
    assert "| a: appearance shift (priors matched) | 0.700 +- 0.000 | 0.610 +- 0.014 | - | - | - |" in table
    assert "| b: appearance + label shift | - | 0.500 +- 0.000 (2/2 collapsed) | - | 0.650 +- 0.000 | - |" in table
    priors = prior_table(runs, rows)
    assert "| b | bbse | 0.040 +- 0.000 | - | 0.300 +- 0.000 | - | 0.100 +- 0.000 | - |" in priors
    assert "| b | em | 0.040 +- 0.000 | - | 0.150 +- 0.000 | - | 0.050 +- 0.000 | - |" in priors
    assert verdicts(runs, rows, [0.88, 0.9]) == [
        "ceiling, the source-only network trained on labelled phantom-nih (row a's target): 0.890 +- 0.014",
        "positive control, row a: ours beats none? no (0.610 against 0.700; better in 0 of 2 seeds)",
        "positive control, row b: ours+em beats ours? yes (0.650 against 0.500; better in 2 of 2 seeds)",
    ]


def test_rows_share_their_starts() -> None:
    assert [ROWS[name].start for name in "abcde"] == ["phantom", "phantom", "synthetic", "synthetic-ssl", "phantom-nih"]


def test_an_unknown_row_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--rows", "a,z", "--runs-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown row 'z'" in err[0]
    assert not (tmp_path / "runs").exists()


def test_the_ceiling_is_read_from_the_starts_trained_on_the_target(tmp_path: Path) -> None:
    starts = {"phantom-nih-none-seed0": 0.9, "phantom-nih-none-seed1": 0.8, "phantom-none-seed0": 0.6}
    for name, accuracy in starts.items():
        (tmp_path / "start" / name).mkdir(parents=True)
        (tmp_path / "start" / name / "results.json").write_text(json.dumps({"balanced_accuracy": accuracy}))
    assert _ceiling(tmp_path) == [0.9, 0.8]
