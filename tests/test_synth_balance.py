"""synth.balance: class-balanced batches, deterministic, resumable and shared by ranks; the trainer's use of them."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from plumbing.errors import UserError
from synth.balance import BalancedBatchSampler
from synth.config import TrainingConfig
from synth.trainer import batch_sampler, training_dataset

LABELS = np.array([0] * 500 + [1] * 40 + [2] * 7)[np.random.default_rng(0).permutation(547)]


def _batches(sampler: BalancedBatchSampler, n: int) -> list[list[int]]:
    return list(islice(iter(sampler), n))


@pytest.mark.parametrize("batch_size", [12, 10])
def test_classes_are_drawn_equally_often(batch_size: int) -> None:
    batches = _batches(BalancedBatchSampler(LABELS, 3, batch_size, seed=1), 300)
    drawn = LABELS[np.concatenate(batches)]
    counts = np.bincount(drawn, minlength=3)
    assert counts.max() - counts.min() <= 1  # one draw of every class per round of 3
    if batch_size % 3 == 0:
        assert all((np.bincount(LABELS[b], minlength=3) == batch_size // 3).all() for b in batches)
    assert abs((np.concatenate(batches)[drawn == 0] < 273).mean() - 0.5) < 0.1  # not always the same members


def test_each_class_is_drawn_without_replacement_epoch_by_epoch() -> None:
    draws = np.concatenate(_batches(BalancedBatchSampler(LABELS, 3, 9, seed=0), 40))  # 120 draws per class
    for c, n in ((1, 40), (2, 7)):
        mine = draws[LABELS[draws] == c]
        members = set(np.flatnonzero(LABELS == c))
        for epoch in range(len(mine) // n):
            assert set(mine[epoch * n : (epoch + 1) * n]) == members


def test_deterministic_resumable_and_shared_by_ranks() -> None:
    full = _batches(BalancedBatchSampler(LABELS, 3, 8, seed=5), 30)
    assert full == _batches(BalancedBatchSampler(LABELS, 3, 8, seed=5), 30)
    assert full != _batches(BalancedBatchSampler(LABELS, 3, 8, seed=6), 30)
    assert _batches(BalancedBatchSampler(LABELS, 3, 8, seed=5, start=17), 13) == full[17:]
    parts = [_batches(BalancedBatchSampler(LABELS, 3, 8, seed=5, start=3, rank=r, world_size=2), 10) for r in (0, 1)]
    assert [a + b for a, b in zip(*parts, strict=True)] == full[3:13]


def test_bad_labels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"classes \[1\] have no image"):
        BalancedBatchSampler(np.array([0, 2, 2]), 3, 4, seed=0)
    with pytest.raises(ValueError, match="in \\[0, 2\\)"):
        BalancedBatchSampler(np.array([0, -1, 1]), 2, 4, seed=0)


def test_the_trainer_trains_on_the_task_members_class_balanced() -> None:
    cfg = TrainingConfig.resolve(data="phantom", data_length=60, resolution=32, batch_size=8, balance_task="1-0s")
    assert cfg.balance_task == "v1-0s"
    dataset = training_dataset(cfg, None)
    labels = np.asarray(dataset.labels)
    assert len(dataset) == 60 and (labels >= 0).all() and np.bincount(labels)[0] > 40  # mostly No Finding
    batches = list(islice(iter(batch_sampler(cfg, dataset, start=0)), 25))
    assert all((np.bincount(labels[b], minlength=2) == 4).all() for b in batches)
    with pytest.raises(UserError, match="no training image of .*Pneumonia"):
        training_dataset(TrainingConfig.resolve(data="phantom", data_length=4, balance_task="3-0s"), None)
    with pytest.raises(UserError, match="--balance-task '3-1s' is not a label task"):
        TrainingConfig.resolve(balance_task="3-1s")
