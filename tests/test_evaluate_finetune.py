"""evaluate.finetune: learning on phantoms, the run folder, LR selection, exact resume, bad --init, 2 gloo processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events

from evaluate.finetune import main
from models.model_file import CLASSIFIER_FILE, load_classifier
from plumbing import engine
from plumbing.cli import run_cli
from plumbing.training import latest_checkpoint, load_checkpoint
from tests.launch import torchrun
from tests.test_synthetic_store import write_store

TINY = ["--data", "phantom", "--backbone", "tiny", "--device", "cpu", "--no-progress"]
# 96 training images: 86 train + 10 validation; batch 16 -> ceil(86 / 16) = 6 steps per epoch.
SMALL = [*TINY, "--image-size", "32", "--length", "96", "--eval-length", "48", "--batch-size", "16", "--lr", "3e-3"]


def _finetune(runs: Path, name: str, *args: str) -> Path:
    assert main([*args, "--runs-dir", str(runs), "--name", name]) == 0
    return runs / name


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN fine-tuned on 600 phantom radiographs (v3-0s, 48 px, 5 epochs; about 10 s on 2 cores)."""
    return _finetune(tmp_path_factory.mktemp("runs"), "learns", *TINY, "--version", "3", "--setting", "0s",
                     "--image-size", "48", "--length", "600", "--eval-length", "200", "--epochs", "5", "--lr", "3e-3")


def test_short_finetune_on_phantoms_beats_chance_and_fills_the_run_folder(phantom_run: Path) -> None:
    results = _results(phantom_run)
    classes = ["No Finding", "Pneumothorax", "Pneumonia", "Cardiomegaly"]
    assert results["classes"] == classes
    assert results["balanced_accuracy"] > 0.35  # chance is 0.25 (measured 0.46-0.55 over seeds 0-3)
    assert results["auroc"] > 0.6
    assert results["images"] == {"train": 540, "validation": 60, "evaluation": 200}
    confusion = torch.tensor(results["confusion_matrix"])
    assert confusion.shape == (4, 4) and int(confusion.sum()) == 200
    assert set(results["recall"]) == set(classes) and sum(results["predicted_histogram"].values()) == 200
    assert results["lr"] == {"lr": 3e-3, "criterion": "given", "best": "highest", "trials": []}
    assert 1 <= results["best_epoch"] <= 5
    for name in ("config.json", "best.pt", CLASSIFIER_FILE):
        assert (phantom_run / name).is_file(), name
    assert latest_checkpoint(phantom_run).name == "checkpoint_85.pt"  # 5 epochs of ceil(540 / 32) steps
    config = json.loads((phantom_run / "config.json").read_text())
    assert "python -m evaluate.finetune" in config["command"] and config["finetune"]["backbone"] == "tiny"
    model, info = load_classifier(phantom_run / CLASSIFIER_FILE, torch.device("cpu"))
    assert info.classes == tuple(classes) and info.image_size == 48
    assert info.training["epoch"] == results["best_epoch"]
    assert info.training["validation_balanced_accuracy"] == pytest.approx(results["validation_balanced_accuracy"])


def test_lr_grid_records_every_trial_and_trains_the_best(tmp_path: Path) -> None:
    small = [a for a in SMALL if a not in ("--lr", "3e-3")]
    run = _finetune(tmp_path, "grid", *small, "--epochs", "1", "--lr-grid", "1e-5,3e-3", "--lr-trial-epochs", "1")
    choice = _results(run)["lr"]
    assert choice["criterion"] == "validation balanced accuracy" and choice["best"] == "highest"
    trials = choice["trials"]
    assert [t["lr"] for t in trials] == [1e-5, 3e-3]
    best = max(trials, key=lambda t: t["score"])  # max keeps the earlier of equal scores, as select_lr does
    assert choice["lr"] == best["lr"]


def _final_state(run: Path) -> dict[str, Any]:
    ckpt = load_checkpoint(latest_checkpoint(run))
    return {"model": ckpt["model"], "optimizer": ckpt["optimizer"]["state"], "run": ckpt["run"]}


def _interrupted_then_resumed(runs: Path, name: str, args: list[str], at: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Start a run, stop it (KeyboardInterrupt) right after the checkpoint of iteration ``at``, then ``--resume``."""
    attach = engine.attach_training_handlers

    def attach_then_interrupt(engine: Any, **kwargs: Any) -> None:
        attach(engine, **kwargs)

        @engine.on(Events.ITERATION_COMPLETED(once=at))  # registered after the checkpoint handler
        def _interrupt(_: Any) -> None:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine, "attach_training_handlers", attach_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            _finetune(runs, name, *args)
    run = runs / name
    assert latest_checkpoint(run).name == f"checkpoint_{at}.pt" and not (run / "results.json").exists()
    return _finetune(runs, name, "--device", "cpu", "--no-progress", "--resume")


def _assert_same_run(a_run: Path, b_run: Path, iterations: int) -> None:
    a, b = _final_state(a_run), _final_state(b_run)
    assert a["run"]["iteration"] == b["run"]["iteration"] == iterations
    torch.testing.assert_close(b["model"], a["model"], rtol=0, atol=0)
    torch.testing.assert_close(b["optimizer"], a["optimizer"], rtol=0, atol=0)
    ra, rb = _results(a_run), _results(b_run)
    assert rb["confusion_matrix"] == ra["confusion_matrix"] and rb["best_epoch"] == ra["best_epoch"]


def test_interrupted_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*SMALL, "--epochs", "3"]
    full = _finetune(tmp_path, "full", *args)
    split = _interrupted_then_resumed(tmp_path, "split", args, 6, monkeypatch)
    _assert_same_run(full, split, 18)
    assert "--resume" in json.loads((split / "config.json").read_text())["resumed_with"][0]
    before = _results(full)
    _finetune(tmp_path, "full", "--device", "cpu", "--no-progress", "--resume")  # a finished run: scored again
    assert _results(full) == before and latest_checkpoint(full).name == "checkpoint_18.pt"


def test_synthetic_store_trains_through_the_block_loader_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store.zarr"
    write_store(store)  # v1-0s, 32 px: 40 train and 10 val images
    on_store = [*TINY, "--data", "synthetic", "--data-root", str(store), "--version", "1", "--setting", "0s",
                "--image-size", "32", "--batch-size", "8", "--lr", "3e-3"]
    args = [*on_store, "--eval-data", "phantom", "--eval-length", "32", "--epochs", "2"]
    full = _finetune(tmp_path, "full", *args)
    assert _results(full)["images"] == {"train": 40, "validation": 10, "evaluation": 32}
    split = _interrupted_then_resumed(tmp_path, "split", args, 5, monkeypatch)
    _assert_same_run(full, split, 10)  # the block loader's 5 full batches per epoch
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*on_store, "--runs-dir", str(tmp_path), "--name", "same-store"])
    assert exit_info.value.code == 2
    assert "pass --eval-data" in capsys.readouterr().err and not (tmp_path / "same-store").exists()


def test_resume_refuses_a_changed_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _finetune(tmp_path, "r", *SMALL, "--epochs", "1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*TINY, "--resume", "--lr", "1e-2", "--runs-dir", str(tmp_path), "--name", "r"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr" in err[0]


def test_imagenet_init_without_cached_weights_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*SMALL, "--backbone", "resnet18", "--init", "imagenet", "--runs-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "python -m evaluate.finetune: error: no ImageNet weights for resnet18" in err[0]
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in err[0]
    assert not (tmp_path / "runs").exists()


def test_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad, says in ((["--epochs", "0"], "--epochs"), (["--lr-grid", "0.1,x"], "--lr-grid"),
                      (["--init", str(tmp_path / "missing.safetensors")], "missing.safetensors")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, [*SMALL, *bad, "--runs-dir", str(tmp_path / "runs")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "runs").exists()


def test_two_gloo_processes_linear_probe_equals_one_process(tmp_path: Path) -> None:
    """A linear probe has no batch-norm statistics to differ per rank: 2 x 8 images = one batch of 16."""
    probe = [*SMALL, "--mode", "linear", "--epochs", "2"]
    one = _finetune(tmp_path, "one", *probe)
    torchrun("evaluate.finetune", [*probe, "--runs-dir", str(tmp_path), "--name", "two"])
    two = tmp_path / "two"
    assert sorted(p.name for p in two.glob("checkpoint_*.pt")) == ["checkpoint_12.pt", "checkpoint_6.pt"]
    a, b = _final_state(one), _final_state(two)
    torch.testing.assert_close(b["model"], a["model"], rtol=1e-5, atol=1e-6)
    ra, rb = _results(one), _results(two)
    assert rb["confusion_matrix"] == ra["confusion_matrix"] and rb["images"] == ra["images"]
    assert rb["balanced_accuracy"] == pytest.approx(ra["balanced_accuracy"])
    assert rb["auroc"] == pytest.approx(ra["auroc"], abs=1e-6)


def test_names_roots_and_output_folders_are_one_line_naming_this_commands_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXR_CHEXPERT_ROOT", raising=False)
    file = tmp_path / "file"
    file.write_text("x")
    for bad, runs, says in (
        (["--name", ""], tmp_path / "runs", "--name '' must be one plain folder name"),
        (["--lr-grid", "1e-3,,1e-2"], tmp_path / "runs", "--lr-grid '1e-3,,1e-2' has an empty item"),
        (["--eval-data", "chexpert", "--version", "1"], tmp_path / "runs",
         "chexpert: no data root given; pass --eval-root or set CXR_CHEXPERT_ROOT"),
        (["--data", "chexpert", "--version", "1"], tmp_path / "runs",
         "chexpert: no data root given; pass --data-root or set CXR_CHEXPERT_ROOT"),
        ([], file, f"--runs-dir {file} is a file, not a folder"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, [*SMALL, *bad, "--runs-dir", str(runs)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (bad, err)
    assert not (tmp_path / "runs").exists()
