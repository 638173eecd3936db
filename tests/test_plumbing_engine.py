"""plumbing.engine, .ema, .lr_schedules, .precision: the trainer skeleton, the EMA, the cosine schedule, the layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from plumbing.ema import ema_update
from plumbing.engine import StepRunner
from plumbing.lr_schedules import cosine_decay, cosine_factor
from plumbing.lr_selection import choose_lr, resumed_choice
from plumbing.precision import memory_layout
from plumbing.run_folders import open_run
from plumbing.training import Progress, TrainingDiverged, latest_checkpoint, load_checkpoint, restore


@dataclass
class CountingState(Progress):
    seen: list[int] = field(default_factory=list)


class Counter:
    """A trainer whose step records the iteration it ran at and the batch it got; the loss is ``losses[i]``."""

    def __init__(self, losses: list[float]) -> None:
        self.losses = losses
        self.state = CountingState()
        self.batches: list[int] = []

    def step(self, batch: int) -> dict[str, float]:
        self.state.seen.append(self.state.iteration)
        self.batches.append(batch)
        return {"loss": self.losses[self.state.iteration]}


def _batches(start: int) -> Any:
    return iter(range(start, 10**6))


def _run(trainer: Counter, run_dir: Path, total: int, calls: list[tuple[str, int]]) -> None:
    runner = StepRunner(trainer.step, trainer.state, total=total, epoch_length=4)
    runner.at_epoch_start(lambda epoch: calls.append(("epoch", epoch)))
    runner.every(3, lambda it: calls.append(("every", it)), at_end=True)
    to_save = {"run": trainer.state, "model": torch.nn.Linear(1, 1)}  # Ignite unwraps a single object
    runner.train(_batches(trainer.state.iteration), run_dir=run_dir, to_save=to_save, checkpoint_every=2,
                 progress=False)


def test_steps_record_their_position_and_a_resume_continues_where_the_checkpoint_left(tmp_path: Path) -> None:
    full, calls = Counter([1.0] * 10), []
    run = open_run(tmp_path, "full", False)
    run.create()
    _run(full, run.path, 10, calls)
    assert full.state.iteration == 10 and full.state.seen == list(range(10)) and full.batches == list(range(10))
    assert calls == [("epoch", 0), ("every", 3), ("epoch", 1), ("every", 6), ("epoch", 2), ("every", 9),
                     ("every", 10)]
    assert latest_checkpoint(run.path).name == "checkpoint_10.pt"

    split = open_run(tmp_path, "split", False)
    split.create()
    first = Counter([1.0] * 10)
    _run(first, split.path, 6, [])
    resumed, calls = Counter([1.0] * 10), []
    restore({"run": resumed.state, "model": torch.nn.Linear(1, 1)}, load_checkpoint(latest_checkpoint(split.path)))
    assert resumed.state.iteration == 6 and resumed.state.seen == list(range(6))
    _run(resumed, split.path, 10, calls)
    assert resumed.state.seen == full.state.seen and resumed.state.iteration == 10
    assert calls == [("epoch", 1), ("epoch", 2), ("every", 9), ("every", 10)]  # epoch 1 goes on from iteration 6


def test_a_non_finite_loss_stops_the_run_or_ends_a_trial(tmp_path: Path) -> None:
    run = open_run(tmp_path, "nan", False)
    run.create()
    trainer = Counter([1.0, 1.0, 1.0, math.nan, 1.0, 1.0])
    with pytest.raises(TrainingDiverged, match="iteration 4"):
        StepRunner(trainer.step, trainer.state, total=6, epoch_length=6).train(
            _batches(0), run_dir=run.path, to_save={"run": trainer.state}, checkpoint_every=2, progress=False)
    assert latest_checkpoint(run.path).name == "checkpoint_2.pt"
    trial, diverged = Counter([1.0, math.inf, 1.0]), []
    StepRunner(trial.step, trial.state, total=3, epoch_length=3).trial(
        _batches(0), progress=False, desc="lr 1", on_diverged=lambda: diverged.append(True))
    assert diverged == [True] and trial.state.iteration == 2
    with pytest.raises(ValueError):
        StepRunner(trial.step, trial.state, total=0, epoch_length=3)


def test_ema_update_moves_parameters_by_the_decay_and_copies_or_keeps_buffers() -> None:
    model, average = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    model.weight.data.fill_(2.0)
    average.weight.data.fill_(1.0)
    model.running_mean.fill_(7.0)
    ema_update(average, model, 0.75, buffers="keep")
    torch.testing.assert_close(average.weight, torch.full((3,), 0.75 * 1.0 + 0.25 * 2.0))
    torch.testing.assert_close(average.running_mean, torch.zeros(3))  # its own statistics
    ema_update(average, model, 0.5, buffers="copy")
    torch.testing.assert_close(average.weight, torch.full((3,), 0.5 * 1.25 + 0.5 * 2.0))
    torch.testing.assert_close(average.running_mean, torch.full((3,), 7.0))
    ema_update(average, model, 0.0, buffers="copy")
    assert torch.equal(average.weight, model.weight)
    before = average.bias.detach().clone()
    model.bias.data.fill_(5.0)
    ema_update(average, model, 1.0, buffers="keep")
    assert torch.equal(average.bias, before)
    # the formula in its order: m * theta_avg, then + (1 - m) * theta, as MoCo's key encoder has it
    a, b = torch.randn(1000), torch.randn(1000)
    left, right = torch.nn.Linear(1000, 1, bias=False), torch.nn.Linear(1000, 1, bias=False)
    left.weight.data.copy_(a[None])
    right.weight.data.copy_(b[None])
    ema_update(left, right, 0.999, buffers="keep")
    assert torch.equal(left.weight[0], a.clone().mul_(0.999).add_(b, alpha=1 - 0.999))
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(torch.nn.Linear(2, 2), model, 0.5, buffers="copy")
    with pytest.raises(ValueError, match="buffers"):
        ema_update(average, model, 0.5, buffers="drop")  # type: ignore[arg-type]


def test_cosine_decay_falls_from_the_base_rate_to_zero_and_stays_there() -> None:
    assert cosine_factor(0, 8) == 1.0 and cosine_factor(4, 8) == pytest.approx(0.5)
    assert cosine_factor(8, 8) == pytest.approx(0.0) and cosine_factor(20, 8) == cosine_factor(8, 8)
    assert cosine_factor(2, 8) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    schedule = cosine_decay(optimizer, 4)
    rates = []
    for _ in range(5):
        optimizer.step()
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    assert rates == pytest.approx([0.2 * cosine_factor(t, 4) for t in range(1, 6)])
    assert schedule.state_dict()["lr_lambdas"] == [None]  # nothing but counters in a checkpoint
    with pytest.raises(ValueError):
        cosine_decay(optimizer, 0)


def test_the_layout_is_channels_last_on_cuda_only() -> None:
    assert memory_layout(torch.device("cpu")) == torch.contiguous_format
    assert memory_layout(torch.device("cuda")) == torch.channels_last


def test_choose_lr_takes_the_given_rate_or_the_best_trial_and_reads_a_resumed_choice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tried: list[float] = []

    def trial(lr: float) -> float:
        tried.append(lr)
        return {0.1: 0.5, 0.01: 0.9}[lr]

    given = choose_lr(0.3, (0.1, 0.01), trial, criterion="accuracy", maximise=True, trial_epochs=1)
    assert given.lr == 0.3 and given.criterion == "given" and not tried
    best = choose_lr(None, (0.1, 0.01), trial, criterion="accuracy", maximise=True, trial_epochs=2, label="moco ")
    assert best.lr == 0.01 and tried == [0.1, 0.01]
    assert capsys.readouterr().err.splitlines() == ["moco lr 0.1: accuracy 0.5000 after 2 epoch(s)",
                                                    "moco lr 0.01: accuracy 0.9000 after 2 epoch(s)"]
    again = resumed_choice(best.to_dict(), maximise=True)
    assert (again.lr, again.criterion, again.trials) == (0.01, "accuracy", ())
