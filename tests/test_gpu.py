"""On a CUDA device: training with bf16 and channels_last, generation, and reading a store onto the GPU.

Marked ``gpu``: skipped where torch sees no CUDA device; ``bench/gpu.sh`` runs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.block_loader import BlockLoader
from datasets.registry import build_dataset
from plumbing.training import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.gpu


def test_training_steps_on_the_gpu_stay_finite(tmp_path: Path) -> None:
    from synth.train import main

    main([
        "--data", "phantom", "--data-length", "32", "--resolution", "32", "--batch-size", "8", "--kimg", "0.032",
        "--snapshot-kimg", "0.032", "--r1-interval", "2", "--pl-weight", "2", "--device", "cuda", "--amp", "auto",
        "--no-progress", "--runs-dir", str(tmp_path), "--name", "gpu",
    ])
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "gpu"))
    assert ckpt["run"]["iteration"] == 4
    for net in ("G", "D", "G_ema"):
        assert all(torch.isfinite(v).all() for v in ckpt[net].values() if v.is_floating_point())


def test_generation_on_the_gpu_matches_the_cpu_within_one_grey_level(tmp_path: Path) -> None:
    from synth.generate import main

    stores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.zarr"
        main(["--version", "1", "--setting", "0s", "--train-per-class", "8", "--val-per-class", "4",
              "--device", device, "--out", str(out)])
        stores[device] = build_dataset("synthetic", root=str(out), split="train", resolution=64)
    cpu, gpu = (np.stack([s["image"].numpy() for s in stores[d]]) for d in ("cpu", "cuda"))
    assert np.abs(cpu - gpu).max() <= 1.0 / 255.0 + 1e-6


def test_block_loader_delivers_float_batches_on_the_gpu(tmp_path: Path) -> None:
    from synth.generate import main

    out = tmp_path / "s.zarr"
    main(["--version", "1", "--setting", "0s", "--train-per-class", "16", "--val-per-class", "4",
          "--device", "cuda", "--out", str(out)])
    train = build_dataset("synthetic", root=str(out), split="train", resolution=64, augment=True)
    batches = list(BlockLoader(train, 8, seed=0, device="cuda"))
    assert len(batches) == 4
    for batch in batches:
        assert batch["image"].is_cuda and batch["image"].dtype == torch.float32
        assert batch["image"].shape == (8, 1, 64, 64) and 0.0 <= float(batch["image"].min())


def test_adaptation_steps_on_the_gpu_stay_finite_and_export(tmp_path: Path) -> None:
    import json

    from adapt.train import main

    main([
        "--source", "phantom", "--target", "phantom-nih", "--version", "3", "--setting", "0s", "--alignment", "dcan",
        "--prior-correction", "none,em", "--backbone", "resnet18", "--init", "scratch", "--image-size", "32",
        "--batch-size", "8", "--steps", "4",
        "--eval-every", "2", "--source-length", "64", "--target-length", "64", "--eval-length", "32",
        "--device", "cuda", "--amp", "auto", "--no-progress", "--runs-dir", str(tmp_path), "--name", "gpu",
    ])
    results = json.loads((tmp_path / "gpu-dcan-seed0" / "results.json").read_text())
    assert [h["step"] for h in results["history"]] == [2, 4]
    assert all(np.isfinite(h["balanced_accuracy"]) for h in results["history"])
    assert (tmp_path / "gpu-dcan-seed0" / "classifier.safetensors").is_file()
    corrected = json.loads((tmp_path / "gpu-dcan+em-seed0" / "results.json").read_text())  # class-weighted steps
    assert all(np.isfinite(h["balanced_accuracy"]) and sum(h["prior_estimates"]["em"]) == pytest.approx(1.0)
               for h in corrected["history"])


def test_every_pretext_task_steps_on_the_gpu_in_bf16(tmp_path: Path) -> None:
    import json

    from ssl.curriculum import main

    main([
        "run", "--tasks", "relloc,rotation,moco,swav,odc", "--no-singles", "--set", "relloc.hidden_dim=64",
        "--set", "moco.queue_length=32", "--set", "swav.prototypes=16", "--set", "odc.clusters=4",
        "--data", "phantom", "--max-images", "64", "--downstream", "phantom", "--version", "3", "--setting", "0s",
        "--length", "64", "--eval-length", "32", "--backbone", "resnet18", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--lr", "0.03", "--downstream-lr-grid", "0.001", "--device", "cuda", "--amp", "auto",
        "--no-progress", "--runs-dir", str(tmp_path),
    ])
    results = json.loads((tmp_path / "ssl-phantom-v3-0s-relloc-rotation-moco-swav-odc-seed0" / "results.json")
                         .read_text())
    assert [s["task"] for s in results["steps"]] == ["relloc", "rotation", "moco", "swav", "odc"]
    assert all(np.isfinite(v) for s in results["steps"] for v in s["epoch_losses"])
