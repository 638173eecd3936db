"""evaluate.attention on a fine-tuned run, and lung masks from a folder for real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluate.ail.lung_masks import MaskSource, read_mask
from evaluate.attention import main
from evaluate.finetune import main as finetune
from plumbing.cli import run_cli
from plumbing.errors import UserError

RUN = ["--data", "phantom", "--backbone", "tiny", "--image-size", "32", "--length", "96", "--eval-length", "40",
       "--batch-size", "16", "--lr", "3e-3", "--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert finetune([*RUN, "--runs-dir", str(runs), "--name", "ft"]) == 0
    return runs / "ft"


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_attention_writes_figures_grid_and_summary(run: Path, method: str) -> None:
    assert main(["--run", str(run), "--method", method, "--max-images", "24", "--grid", "6", "--batch-size", "10",
                 "--device", "cpu", "--no-progress"]) == 0
    record = json.loads((run / "attention.json").read_text())
    assert record["images"] == 24 and record["method"] == method and record["layer"] == "backbone.body.stage3"
    assert record["data"] == "phantom test split"
    ail = record["ail"]
    assert 0.0 <= ail["mean"] <= 1.0 and ail["std"] >= 0.0 and ail["n"] == 24
    assert sum(c["n"] for c in ail["per_class"].values()) == 24
    assert 0.0 <= record["accuracy"] <= 1.0
    assert 0.1 < record["uniform_map_ail"] < 0.6  # the lungs' share of a phantom radiograph
    with Image.open(run / "attention.png") as grid:
        assert grid.mode == "RGB" and grid.width > 6 * 32 and grid.height > 32
    summary = (run / "attention.md").read_text()
    assert "| all | 24 |" in summary and "attention.png" in summary


def test_an_earlier_layer_gives_finer_maps(run: Path) -> None:
    assert main(["--run", str(run), "--layer", "backbone.body.stage2", "--max-images", "8", "--grid", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    record = json.loads((run / "attention.json").read_text())
    assert record["layer"] == "backbone.body.stage2" and record["images"] == 8


def test_a_folder_without_a_classifier_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--run", str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no classifier.safetensors" in err[0]


def test_data_that_does_not_fit_the_classifier_is_one_line(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--run", str(run), "--data", "isic2019", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data isic2019" in err[0] and "does not fit the classifier" in err[0]


def _mask(path: Path, width: int, height: int) -> None:
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, : width // 2] = 255  # left half is lung
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_mask_folder_matches_ids_resizes_and_refuses_missing_or_wrong_size(tmp_path: Path) -> None:
    _mask(tmp_path / "patient1" / "view1.png", 64, 64)
    mask = read_mask(tmp_path, "patient1/view1.jpg", 16, (64, 64))
    assert mask.shape == (1, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(mask[0, :, :8], torch.ones(16, 8))
    torch.testing.assert_close(mask[0, :, 8:], torch.zeros(16, 8))
    _mask(tmp_path / "other.png", 64, 64)
    assert read_mask(tmp_path, "deep/folder/other.jpg", 16, None).shape == (1, 16, 16)  # by file name
    with pytest.raises(UserError, match="no lung mask for image missing/img.jpg"):
        read_mask(tmp_path, "missing/img.jpg", 16, (64, 64))
    with pytest.raises(UserError, match=r"is 64x64 px but its image is 80x64 px"):
        read_mask(tmp_path, "patient1/view1.jpg", 16, (80, 64))


def test_data_without_masks_needs_a_mask_folder(tmp_path: Path) -> None:
    samples = [{"image": torch.zeros(1, 8, 8), "label": 0, "id": "a.jpg"}]
    with pytest.raises(UserError, match="come without lung masks; pass --lung-masks DIR"):
        MaskSource(samples, "chexpert", None, 8)
    with pytest.raises(UserError, match="is not a folder"):
        MaskSource(samples, "chexpert", tmp_path / "nowhere", 8)
