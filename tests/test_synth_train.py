"""synth.train: runs, writes grids/checkpoints/exports, and resumes exactly (also mid-fade)."""

from __future__ import annotations

import errno
import logging
import math
from pathlib import Path

import pytest
import torch

from datasets.findings import CHEXPERT
from plumbing.cli import run_cli
from plumbing.errors import UserError
from plumbing.training import latest_checkpoint, load_checkpoint
from synth.config import TrainingConfig
from synth.export import load_generator
from synth.network_config import NetworkConfig
from synth.train import main
from synth.trainer import GanTrainer
from tests import real_layouts as rl
from tests.launch import torchrun

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
        main([
            "--resolution", "32", "--start-resolution", "24", "--runs-dir", str(tmp_path), "--name", "x",
            "--device", "cpu",
        ])


# ---------------------------------------------------------------- faults found by probing the command
# Tests that need a run folder but not real training replace the GAN step by a cheap one
# (``fake_steps``): checkpoints, grids and exports are still written by the real code.


@pytest.fixture
def fake_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("synth.trainer.GanTrainer.step", lambda self, it, batch: {"loss_g": 0.0, "loss_d": 0.0})


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run the command as ``python -m synth.train`` does; exit code and the stderr lines that are not progress."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return int(exit_info.value.code or 0), lines


def _errors(lines: list[str]) -> list[str]:
    return [line for line in lines if "error" in line.lower() or "terminating" in line.lower()]


def _engine_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What Ignite's engine logged at WARNING or above (its 'terminating due to exception' lines)."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("ignite") and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("option", ["--kimg", "--snapshot-kimg", "--lr", "--fade-kimg"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_infinite_lengths_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                       value: str) -> None:
    code, lines = _cli([*COMMON, "--runs-dir", str(tmp_path), option, value], capsys)
    assert code == 2 and len(lines) == 1 and "finite" in lines[0]
    assert not any(tmp_path.iterdir())


def test_failed_starts_leave_no_run_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for argv, match in (
        (["--data", "nope"], "unknown data set"),
        (["--data", "chexpert", "--data-root", str(tmp_path / "missing")], "not a folder"),
        (["--data", "phantom", "--data-root", str(tmp_path)], "needs no files"),
        (["--resolution", "32", "--start-resolution", "8", "--stable-kimg", "0.016", "--fade-kimg", "0"], "fade"),
        (["--resolution", "32", "--start-resolution", "24"], "start resolution"),
        (["--resolution", "32", "--channel-base", "16"], "channel_base"),
        (["--resolution", "32", "--amp", "on"], "no native bf16"),
        (["--name", "../../escape"], "one plain folder name"),
    ):
        with pytest.raises(UserError, match=match):
            main([*argv, "--runs-dir", str(runs), "--device", "cpu", "--no-progress", "--data-length", "8"])
        assert not runs.exists(), argv
    assert not (tmp_path.parent / "escape").exists()


def test_nan_in_the_first_iteration_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("synth.trainer.GanTrainer.step", lambda self, it, batch: {"loss_g": float("nan")})
    code, lines = _cli([*COMMON, "--runs-dir", str(tmp_path), "--name", "nan", "--kimg", "0.064"], capsys)
    errors = _errors(lines)
    assert code == 2 and len(errors) == 1, lines
    assert "became nan at iteration 1" in errors[0] and "no checkpoint had been written" in errors[0]
    assert _engine_log(caplog) == []
    assert not (tmp_path / "nan").exists()  # nothing for a later --resume to trip over
    with pytest.raises(UserError, match="no checkpoint"):
        _run(tmp_path, "nan", "0.064", "--resume")


def test_nan_after_a_checkpoint_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, fake_steps: None,
) -> None:
    _run(tmp_path, "r", "0.032")
    monkeypatch.setattr("synth.trainer.GanTrainer.step", lambda self, it, batch: {"loss_g": float("inf")})
    code, lines = _cli([*COMMON, "--runs-dir", str(tmp_path), "--name", "r", "--kimg", "0.064", "--resume"], capsys)
    errors = _errors(lines)
    assert code == 2 and len(errors) == 1 and str(tmp_path / "r" / "checkpoint_4.pt") in errors[0], lines
    assert _engine_log(caplog) == []
    assert latest_checkpoint(tmp_path / "r").name == "checkpoint_4.pt"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, workers: str,
    fake_steps: None,
) -> None:
    root = rl.write_nih(tmp_path, n_rows=6, n_test=2)
    for image in (root / "images").iterdir():
        rl.truncate(image)
    runs = tmp_path / "runs"
    argv = ["--data", "chestxray8", "--data-root", str(root), "--resolution", "32", "--batch-size", "2",
            "--kimg", "0.004", "--device", "cpu", "--no-progress", "--runs-dir", str(runs), "--name", "bad",
            "--workers", workers]
    code, lines = _cli(argv, capsys)
    errors = _errors(lines)
    assert code == 2 and len(errors) == 1 and "could not be decoded" in errors[0], lines
    assert "Traceback" not in "\n".join(lines) and _engine_log(caplog) == []
    assert not (runs / "bad").exists()


def test_resume_refuses_changed_run_options(tmp_path: Path, fake_steps: None) -> None:
    _run(tmp_path, "r", "0.032")
    for extra, named in (
        (["--lr", "0.01"], "--lr 0.01"),
        (["--batch-size", "4"], "--batch-size 4"),
        (["--data", "phantom-nih"], "--data phantom-nih"),
        (["--resolution", "64"], "--resolution 64"),
        (["--cache"], "--cache True"),
        (["--ac-weight", "1"], "--ac-weight 1"),
        (["--balance-task", "3-0s"], "--balance-task"),
    ):
        with pytest.raises(UserError, match=named):
            _run(tmp_path, "r", "0.064", "--resume", *extra)
    with pytest.raises(UserError, match="networks"):
        _run(tmp_path, "r", "0.064", "--resume", "--preset", "paper")
    assert latest_checkpoint(tmp_path / "r").name == "checkpoint_4.pt"
    # Options left at their defaults are taken from the checkpoint, whatever the defaults are.
    main(["--runs-dir", str(tmp_path), "--name", "r", "--kimg", "0.064", "--resume", "--device", "cpu",
          "--no-progress"])
    assert latest_checkpoint(tmp_path / "r").name == "checkpoint_8.pt"


def test_resume_falls_back_past_a_damaged_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_steps: None
) -> None:
    run = _run(tmp_path, "r", "0.064", "--snapshot-kimg", "0.016")  # checkpoints every 2 steps; 6 and 8 are kept
    assert latest_checkpoint(run).name == "checkpoint_8.pt"
    (run / "checkpoint_8.pt").write_bytes(b"truncated")
    capsys.readouterr()
    code, lines = _cli([*COMMON, "--runs-dir", str(tmp_path), "--name", "r", "--kimg", "0.08", "--resume",
                        "--snapshot-kimg", "0.016"], capsys)
    assert code == 0
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 1 and "checkpoint_8.pt" in warnings[0] and "checkpoint_6.pt" in warnings[0]
    assert "weights_only" not in warnings[0]
    assert latest_checkpoint(run).name == "checkpoint_10.pt"


def test_foreign_checkpoints_are_one_line(tmp_path: Path) -> None:
    run = tmp_path / "foreign"
    run.mkdir()
    for content in ({"weights": torch.zeros(1)}, torch.zeros(3), {"run": {"config": {}}, "G_ema": {}}):
        torch.save(content, run / "checkpoint_4.pt")
        with pytest.raises(UserError, match="checkpoint_4.pt is not a synth.train checkpoint") as info:
            _run(tmp_path, "foreign", "0.064", "--resume")
        assert "\n" not in str(info.value)
        with pytest.raises(UserError, match="checkpoint_4.pt is not a synth.train checkpoint"):
            load_generator(run / "checkpoint_4.pt", torch.device("cpu"))
    torch.save({"path": Path("x")}, run / "checkpoint_8.pt")  # an object that loading would have to construct
    with pytest.raises(UserError, match="would execute code") as info:
        load_checkpoint(run / "checkpoint_8.pt")
    assert "weights_only" not in str(info.value)


def test_checkpoint_with_a_missing_training_key_is_one_line(tmp_path: Path, fake_steps: None) -> None:
    run = _run(tmp_path, "old", "0.032")
    checkpoint = load_checkpoint(run / "checkpoint_4.pt")
    del checkpoint["run"]["config"]["training"]["cache"]  # no default is taken for a key every run writes
    torch.save(checkpoint, run / "checkpoint_4.pt")
    for read in (lambda: _run(tmp_path, "old", "0.064", "--resume"),
                 lambda: load_generator(run / "checkpoint_4.pt", torch.device("cpu"))):
        with pytest.raises(UserError, match=r"checkpoint_4.pt is not a synth.train checkpoint .*lacks .*cache"):
            read()


def test_checkpoint_without_the_keys_added_later_takes_their_defaults(tmp_path: Path, fake_steps: None) -> None:
    run = _run(tmp_path, "old", "0.032")
    checkpoint = load_checkpoint(run / "checkpoint_4.pt")
    for key in ("ac_weight", "balance_task"):  # runs recorded before these options existed
        del checkpoint["run"]["config"]["training"][key]
    torch.save(checkpoint, run / "checkpoint_4.pt")
    assert load_generator(run / "checkpoint_4.pt", torch.device("cpu")).training["data"] == "phantom"
    _run(tmp_path, "old", "0.064", "--resume")
    training = load_checkpoint(latest_checkpoint(run))["run"]["config"]["training"]
    assert training["ac_weight"] == 0.0 and training["balance_task"] is None


def test_ac_gan_on_balanced_classes_resumes_exactly(tmp_path: Path) -> None:
    args = ["--data", "phantom", "--data-length", "24", "--resolution", "32", "--batch-size", "8",
            "--r1-interval", "2", "--ac-weight", "1", "--balance-task", "1-Xs", "--snapshot-kimg", "0.016",
            "--device", "cpu", "--no-progress", "--runs-dir", str(tmp_path)]
    main([*args, "--name", "full", "--kimg", "0.032"])
    main([*args, "--name", "split", "--kimg", "0.016"])
    main([*args, "--name", "split", "--kimg", "0.032", "--resume"])
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "split")
    assert a["it"] == b["it"] == 4 and "b4.aux.weight" in a["D"]
    for net in ("G", "D", "G_ema", "augment"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    training = load_checkpoint(latest_checkpoint(tmp_path / "full"))["run"]["config"]["training"]
    assert training["ac_weight"] == 1.0 and training["balance_task"] == "v1-Xs"


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_step_trains_and_logs_the_auxiliary_classifier(amp: bool) -> None:
    network = NetworkConfig.preset("tiny", resolution=32, c_dim=len(CHEXPERT.columns))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 1, 32, 32, generator=g),
             "findings": (torch.rand(4, len(CHEXPERT.columns), generator=g) < 0.3).float()}
    for weight in (0.0, 1.0):
        cfg = TrainingConfig.resolve(resolution=32, batch_size=4, r1_interval=1, ac_weight=weight)
        trainer = GanTrainer(cfg, network, CHEXPERT, torch.device("cpu"), amp)
        if weight == 0.0:
            out = trainer.step(0, batch)
            assert trainer.D.b4.aux is None and out["ac_real"] == out["ac_fake"] == 0.0
            continue
        before = trainer.D.b4.aux.weight.detach().clone()
        out = trainer.step(0, batch)
        assert all(math.isfinite(v) for v in out.values())
        assert out["ac_real"] > 0.1 and out["ac_fake"] > 0.1  # BCE of a fresh classifier, near log 2
        assert not torch.equal(trainer.D.b4.aux.weight, before)


def test_checkpoint_as_generator_is_read_like_an_export(tmp_path: Path, fake_steps: None) -> None:
    run = _run(tmp_path, "mid", "0.032")  # 4 steps: mid-fade of 32 px
    from_checkpoint = load_generator(run / "checkpoint_4.pt", torch.device("cpu"))
    exported = load_generator(run / "generator.safetensors", torch.device("cpu"))
    assert from_checkpoint.trained_on_phantoms and exported.trained_on_phantoms
    assert from_checkpoint.training == exported.training
    for loaded in (from_checkpoint, exported):
        with pytest.raises(UserError, match="stopped growing at 32 px"):
            loaded.check_fully_grown()


@pytest.mark.parametrize("target", [
    "synth.trainer.export_generator",  # generator.safetensors
    "synth.trainer.save_image",  # the sample grid
    "torch.save",  # the checkpoint (Ignite's DiskSaver)
    "plumbing.run_folders.write_json_atomic",  # config.json
])
def test_full_disk_during_a_snapshot_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, target: str,
    fake_steps: None,
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target, full)
    code, lines = _cli([*COMMON, "--runs-dir", str(tmp_path), "--name", "full", "--kimg", "0.064"], capsys)
    errors = _errors(lines)
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0], lines
    assert not (tmp_path / "full").exists()


@pytest.mark.parametrize("option", ["--batch-size", "--steps", "--gen-images", "--gen-batch", "--resolution"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_bench_zero_sizes_are_one_line(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.synth import main as bench_main

    with pytest.raises(SystemExit) as exit_info:
        run_cli(bench_main, [option, value, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and option in err[0]


def test_two_gloo_processes_train_and_resume_with_one(tmp_path: Path) -> None:
    """2 processes share each global batch, write one run; 1 process resumes it where it stopped.

    With the auxiliary classifier and class-balanced batches on, so that their
    gradients and batch parts go through the ranks too. The 2-process run is
    not compared value for value with a 1-process run:
    each rank draws its own latents, noise and augmentations and the
    minibatch standard deviation groups one rank's images (synth.trainer).
    """
    args = [
        "--data", "phantom", "--data-length", "32", "--resolution", "32", "--batch-size", "8", "--r1-interval", "2",
        "--pl-weight", "2", "--ada-kimg", "0.1", "--ada-target", "0.0", "--snapshot-kimg", "0.016",
        "--ac-weight", "1", "--balance-task", "1-Xs",
        "--device", "cpu", "--no-progress", "--runs-dir", str(tmp_path), "--name", "ddp",
    ]
    done = torchrun("synth.train", [*args, "--kimg", "0.032"])
    assert done.stderr.count("training ddp") == 1  # rank 0 alone reports
    run = tmp_path / "ddp"
    assert sorted(p.name for p in run.glob("checkpoint_*.pt")) == ["checkpoint_2.pt", "checkpoint_4.pt"]
    ckpt = load_checkpoint(run / "checkpoint_4.pt")
    assert ckpt["run"]["iteration"] == 4 and float(ckpt["augment"]["p"]) > 0.0  # ADA saw both ranks' logits
    assert "b4.aux.weight" in ckpt["D"]
    assert load_generator(run / "generator.safetensors", torch.device("cpu")).training["kimg_done"] == 0.032
    main([*args, "--kimg", "0.048", "--resume"])
    assert load_checkpoint(latest_checkpoint(run))["run"]["iteration"] == 6
