"""synth.train: runs, writes grids/checkpoints/exports, and resumes exactly (also mid-fade)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plumbing.errors import UserError
from plumbing.training import latest_checkpoint, load_checkpoint
from synth.export import load_generator
from synth.train import main

# 8 images per step; 0.064 kimg = 8 steps. Progressive 16 -> 32 px: 2 stable steps at 16 px,
# then a 4-step fade of 32 px, so a resume after 4 steps lands mid-fade (alpha = 0.5).
COMMON = [
    "--data", "phantom", "--data-length", "64", "--resolution", "32", "--start-resolution", "16",
    "--stable-kimg", "0.016", "--fade-kimg", "0.032", "--batch-size", "8", "--r1-interval", "2",
    "--ada-kimg", "0.1", "--ada-target", "0.0", "--snapshot-kimg", "0.032", "--device", "cpu", "--no-progress",
]


def _run(tmp_path: Path, name: str, kimg: str, *extra: str) -> Path:
    main([*COMMON, "--runs-dir", str(tmp_path), "--name", name, "--kimg", kimg, *extra])
    return tmp_path / name


def _final_state(run: Path) -> dict:
    ckpt = load_checkpoint(latest_checkpoint(run))
    return {k: ckpt[k] for k in ("G", "D", "G_ema", "augment")} | {"it": ckpt["run"]["iteration"]}


def test_train_writes_artifacts_and_resume_is_exact(tmp_path: Path) -> None:
    full = _run(tmp_path, "full", "0.064")
    assert latest_checkpoint(full).name == "checkpoint_8.pt"
    grids = sorted((full / "samples").glob("grid-*.png"))
    assert len(grids) == 2
    loaded = load_generator(full / "generator.safetensors", torch.device("cpu"))
    assert loaded.generator.img_resolution == 32 and loaded.training["kimg_done"] == pytest.approx(0.064)
    assert "synth.train" in loaded.training["command"]

    _run(tmp_path, "split", "0.032")
    split = tmp_path / "split"
    assert latest_checkpoint(split).name == "checkpoint_4.pt"
    _run(tmp_path, "split", "0.064", "--resume")

    resumed = load_generator(split / "generator.safetensors", torch.device("cpu")).training
    assert "--kimg 0.032" in resumed["command"] and "--resume" in resumed["resumed_with"][0]
    assert sorted(p.name for p in split.glob("checkpoint_*.pt")) == ["checkpoint_4.pt", "checkpoint_8.pt"]
    a, b = _final_state(full), _final_state(split)
    assert a["it"] == b["it"] == 8
    for net in ("G", "D", "G_ema", "augment"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    assert float(a["augment"]["p"]) > 0.0  # ADA moved toward its (zero) target, with R1 on


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint"):
        _run(tmp_path, "nothing", "0.01", "--resume")
    with pytest.raises(UserError, match="finding vectors"):
        main(["--data", "isic2019", "--data-root", str(tmp_path), "--runs-dir", str(tmp_path), "--device", "cpu"])
    with pytest.raises(UserError, match="start resolution"):
        main(["--resolution", "32", "--start-resolution", "24", "--runs-dir", str(tmp_path), "--name", "x", "--device", "cpu"])
