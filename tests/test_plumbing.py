"""Shared plumbing: resumable sampling, run folders, checkpoints and the finite-loss guard."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from plumbing.errors import UserError
from plumbing.run_folders import open_run
from plumbing.sampling import ResumableBatchSampler
from plumbing.seeding import derive_seed
from plumbing.training import TrainingDiverged, attach_training_handlers, latest_checkpoint, load_checkpoint, restore


def prepare_run_dir(runs_dir: Path, name: str, resume: bool) -> Path:
    run = open_run(runs_dir, name, resume)
    run.create()
    return run.path


def test_sampler_resumes_exactly_and_covers_each_epoch() -> None:
    full = list(itertools.islice(iter(ResumableBatchSampler(10, 4, seed=3)), 12))
    resumed = list(itertools.islice(iter(ResumableBatchSampler(10, 4, seed=3, start=5)), 7))
    assert resumed == full[5:]
    flat = [i for b in full for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # a new permutation per epoch


def test_derive_seed_is_stable_and_key_sensitive() -> None:
    assert derive_seed(1, 2) == derive_seed(1, 2)
    assert derive_seed(1, 2) != derive_seed(1, 3) != derive_seed(2, 2)


def _engine(losses: list[float]) -> Engine:
    model = torch.nn.Linear(2, 1)

    def step(engine: Engine, _batch: object) -> dict[str, float]:
        with torch.no_grad():
            model.weight.add_(1.0)
        return {"loss": losses[engine.state.iteration - 1]}

    eng = Engine(step)
    eng.model = model  # type: ignore[attr-defined]
    return eng


def test_checkpoints_and_resume(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path, "r", resume=False)
    eng = _engine([1.0] * 10)
    attach_training_handlers(
        eng, run_dir=run, to_save={"model": eng.model, "trainer": eng}, checkpoint_every=2, progress=False,
        tensorboard=False,
    )
    eng.run(epoch_length=5, max_epochs=1)
    last = latest_checkpoint(run)
    assert last is not None and last.name == "checkpoint_5.pt"
    with pytest.raises(UserError):
        prepare_run_dir(tmp_path, "r", resume=False)
    ckpt = load_checkpoint(last)
    fresh = _engine([1.0] * 10)
    restore({"model": fresh.model, "trainer": fresh}, ckpt)
    assert fresh.state.iteration == 5
    assert torch.equal(fresh.model.weight, eng.model.weight)


@pytest.mark.parametrize("tensorboard", [False, True])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, tensorboard: bool) -> None:
    run = prepare_run_dir(tmp_path, "nan", resume=False)
    eng = _engine([1.0, 1.0, 1.0, 1.0, float("nan"), 1.0])
    attach_training_handlers(
        eng, run_dir=run, to_save={"model": eng.model, "trainer": eng}, checkpoint_every=2, progress=False,
        tensorboard=tensorboard,
    )
    with pytest.raises(TrainingDiverged, match="iteration 5"):
        eng.run(epoch_length=6, max_epochs=1)
    assert latest_checkpoint(run).name == "checkpoint_4.pt"


def test_resume_without_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint"):
        prepare_run_dir(tmp_path, "none", resume=True)


def test_damaged_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint_1.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint") as info:
        load_checkpoint(bad)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_restore_names_the_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(UserError, match=r"checkpoint .*c.pt lacks model"):
        restore({"model": model}, {"other": {}}, tmp_path / "c.pt")
    with pytest.raises(UserError, match=r"checkpoint .*c.pt does not fit this trainer"):
        restore({"model": model}, {"model": torch.nn.Linear(3, 1).state_dict()}, tmp_path / "c.pt")


def test_dataclass_from_dict_refuses_other_layouts() -> None:
    import dataclasses

    from plumbing.config import dataclass_from_dict

    @dataclasses.dataclass(frozen=True)
    class Config:
        size: int
        rate: float = 0.5

    assert dataclass_from_dict(Config, {"size": 2}, "test config") == Config(2, 0.5)
    with pytest.raises(UserError, match=r"unknown test config keys \['bogus'\]"):
        dataclass_from_dict(Config, {"size": 2, "bogus": 1}, "test config")
    with pytest.raises(UserError, match=r"lacks the keys \['size'\]"):
        dataclass_from_dict(Config, {"rate": 1.0}, "test config")
    with pytest.raises(UserError, match=r"lacks the keys \['rate'\]"):  # a record written in full
        dataclass_from_dict(Config, {"size": 2}, "test config", complete=True)
    with pytest.raises(UserError, match="not a mapping"):
        dataclass_from_dict(Config, [1, 2], "test config")  # type: ignore[arg-type]


def test_bf16_autocast_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from plumbing.precision import use_bf16_autocast

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert not use_bf16_autocast("auto", cpu) and not use_bf16_autocast("off", cpu)
    with pytest.raises(UserError, match="no native bf16"):
        use_bf16_autocast("on", cpu)
    for supported in (True, False):  # an A100/H100 and a V100/T4, without touching a real GPU
        monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s and not including_emulation
        )
        assert use_bf16_autocast("auto", gpu) is supported and not use_bf16_autocast("off", gpu)
    assert not use_bf16_autocast("auto", gpu)
    with pytest.raises(UserError, match="use --amp off"):
        use_bf16_autocast("on", gpu)


def test_default_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from plumbing.cli import default_workers

    assert default_workers(torch.device("cpu")) == 0
    gpu = torch.device("cuda", 0)  # only CPUs are counted; no GPU needed
    for cpus, workers in ((1, 0), (2, 1), (6, 5), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert default_workers(gpu) == workers
