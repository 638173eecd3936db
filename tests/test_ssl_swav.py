"""SwAV: Sinkhorn and the swapped-prediction loss against their formulas, and the task's prototypes and queue."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluate.protocol.task_data import DataChoice
from models.backbones import build_backbone
from plumbing.errors import UserError
from ssl import losses
from ssl.tasks import TaskContext, task_settings
from ssl.tasks import swav as swav_module
from ssl.tasks.swav import Swav, SwavSettings, small_crop_size

SETTINGS = SwavSettings(prototypes=8, feature_dim=16, hidden_dim=32, large_crops=2, small_crops=2, queue_length=8,
                        queue_start_epoch=1)
BATCH = 4


def make_task(settings: SwavSettings = SETTINGS, seed: int = 0) -> Swav:
    torch.manual_seed(seed)
    return Swav(build_backbone("tiny", 1), settings, TaskContext(32, 64, BATCH, 0, 100))


def views(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    ds = DataChoice("phantom", None, 3, "0s", 64).build("train", 32, False)
    return torch.stack([ds[i]["image"] for i in range(8)])


def sinkhorn_by_formula(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """SwAV's Sinkhorn-Knopp written out element by element in float64."""
    q = np.exp(scores / epsilon).T
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row] = q[row] / q[row].sum() / k
        for col in range(b):
            q[:, col] = q[:, col] / q[:, col].sum() / b
    return (q * b).T


def random_scores(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 6, generator=g), dim=1)
    c = F.normalize(torch.randn(k, 6, generator=g), dim=1)
    return z @ c.t()


def test_sinkhorn_matches_formula_and_equipartitions() -> None:
    scores = random_scores(12, 4, 0)
    q = losses.sinkhorn(scores, 0.05, 3)
    np.testing.assert_allclose(q.numpy(), sinkhorn_by_formula(scores.double().numpy(), 0.05, 3), rtol=1e-4, atol=1e-6)
    converged = losses.sinkhorn(scores, 0.5, 200)
    assert (converged >= 0).all()
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(12))
    torch.testing.assert_close(converged.sum(dim=0), torch.full((4,), 12 / 4), rtol=1e-3, atol=1e-3)


class TwoProcessSum:
    """An all-reduce sum over two threads in lockstep, standing in for two processes."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=30)
        self.slots: list[torch.Tensor | None] = [None, None]

    def for_rank(self, rank: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def reduce(value: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = value
            self.barrier.wait()
            total = self.slots[0] + self.slots[1]
            self.barrier.wait()  # both have read before either writes its next value
            return total

        return reduce


def test_sinkhorn_over_two_processes_equals_the_whole_batch() -> None:
    scores = random_scores(10, 5, 1)
    parts = scores[:6], scores[6:]  # unequal shares: the global batch counts the rows of both
    reduction = TwoProcessSum()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(losses.sinkhorn, part, 0.05, 3, reduction.for_rank(r)) for r, part in enumerate(parts)]
        split = torch.cat([f.result() for f in futures])
    torch.testing.assert_close(split, losses.sinkhorn(scores, 0.05, 3))


def test_swav_loss_matches_formula() -> None:
    tau = 0.5
    scores = [torch.tensor([[0.2, -0.1, 0.7], [0.5, 0.3, -0.4]]),
              torch.tensor([[-0.3, 0.8, 0.1], [0.0, 0.6, 0.2]]),
              torch.tensor([[0.9, 0.1, -0.5], [-0.2, -0.7, 0.4]])]  # fmt: skip
    codes = [torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]), torch.tensor([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25]])]

    def cross_entropy(q: torch.Tensor, s: torch.Tensor) -> float:
        total = 0.0
        for n in range(2):
            norm = sum(math.exp(float(x) / tau) for x in s[n])
            total -= sum(float(q[n, k]) * math.log(math.exp(float(s[n, k]) / tau) / norm) for k in range(3))
        return total / 2

    expected = (
        (cross_entropy(codes[0], scores[1]) + cross_entropy(codes[0], scores[2])) / 2
        + (cross_entropy(codes[1], scores[0]) + cross_entropy(codes[1], scores[2])) / 2
    ) / 2
    assert float(losses.swav_loss(scores, codes, tau)) == pytest.approx(expected, rel=1e-6)


def test_settings_from_lists_and_refused_crops() -> None:
    settings = task_settings("swav", {"large_scale": "[0.2, 1.0]", "small_scale": [0.05, 0.2]})
    assert settings.large_scale == (0.2, 1.0) and settings.small_scale == (0.05, 0.2)
    assert SwavSettings(small_scale=[0.1, 0.2]).small_scale == (0.1, 0.2)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="2 crops"):
        SwavSettings(large_crops=1, small_crops=0)
    assert small_crop_size(SETTINGS, 32) == 14 and small_crop_size(SETTINGS, 16) == 8


def test_one_step_reaches_backbone_and_normalises_prototypes(images: torch.Tensor) -> None:
    task = make_task()
    task.start_epoch(1)
    assert not torch.allclose(task.prototypes.weight.norm(dim=1), torch.ones(8))
    loss, logs = task.loss(images[:BATCH], torch.arange(BATCH), views())
    assert torch.isfinite(loss) and logs["loss"] == pytest.approx(float(loss.detach())) and logs["queue"] == 0.0
    torch.testing.assert_close(task.prototypes.weight.norm(dim=1), torch.ones(8))
    loss.backward()
    assert all(p.grad is not None for p in task.backbone.parameters())
    assert sum(float(p.grad.abs().sum()) for p in task.backbone.parameters()) > 0


def test_prototypes_frozen_in_the_first_epoch(images: torch.Tensor) -> None:
    backbone_grads = {}
    for epoch, frozen in ((0, True), (1, False)):
        task = make_task()
        task.start_epoch(epoch)
        optimizer = torch.optim.SGD(task.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        loss, _ = task.loss(images[:BATCH], torch.arange(BATCH), views())
        before = task.prototypes.weight.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backbone_grads[epoch] = [p.grad.clone() for p in task.backbone.parameters()]
        optimizer.step()
        assert (task.prototypes.weight.grad is None) == frozen
        assert torch.equal(task.prototypes.weight, before) == frozen
    for frozen_grad, free_grad in zip(backbone_grads[0], backbone_grads[1], strict=True):
        torch.testing.assert_close(frozen_grad, free_grad)  # freezing leaves every other gradient as it was


def test_queue_fills_from_its_epoch_and_is_used_once_full(
    images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[int] = []

    def recording_sinkhorn(scores: torch.Tensor, *args: object) -> torch.Tensor:
        rows.append(scores.shape[0])
        return losses.sinkhorn(scores, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(swav_module, "sinkhorn", recording_sinkhorn)
    task = make_task()
    batch, idx = images[:BATCH], torch.arange(BATCH)
    task.start_epoch(0)
    assert task.loss(batch, idx, views(0))[1]["queue"] == 0.0
    assert int(task.queue_filled) == 0 and not task.queue.any()

    task.start_epoch(1)
    assert task.loss(batch, idx, views(1))[1]["queue"] == 0.0
    assert int(task.queue_filled) == BATCH
    with torch.no_grad():
        large = task.embeddings(batch, views(1))[: 2 * BATCH].view(2, BATCH, -1)
    torch.testing.assert_close(task.queue[:, :BATCH], large)
    assert not task.queue[:, BATCH:].any()

    assert task.loss(batch, idx, views(2))[1]["queue"] == 0.0  # full only after this batch is in
    assert int(task.queue_filled) == 8
    torch.testing.assert_close(task.queue[:, BATCH:], large)  # the older batch moved back, newest first
    assert task.loss(batch, idx, views(3))[1]["queue"] == 1.0
    assert rows == [BATCH] * 6 + [8 + BATCH] * 2

    state = task.state_dict()
    restored = make_task(seed=1)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, task.queue) and int(restored.queue_filled) == 8


def test_queue_holds_at_most_the_data_set() -> None:
    settings = SwavSettings(prototypes=8, feature_dim=16, hidden_dim=32, queue_length=3840)
    small = Swav(build_backbone("tiny", 1), settings, TaskContext(32, 64, BATCH, 0, 100))
    large = Swav(build_backbone("tiny", 1), settings, TaskContext(32, 10_000, BATCH, 0, 100))
    assert small.queue_capacity() == 64 and large.queue_capacity() == 3840


class TwoRanks:
    """``ignite.distributed`` as rank ``rank`` of two sees it, the other rank's queue rows given."""

    def __init__(self, rank: int, other_rows: torch.Tensor) -> None:
        self.rank, self.other_rows = rank, other_rows

    def get_world_size(self) -> int:
        return 2

    def get_rank(self) -> int:
        return self.rank

    def all_gather(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows, self.other_rows] if self.rank == 0 else [self.other_rows, rows])


def test_a_checkpoint_holds_every_ranks_queue_and_each_rank_takes_its_own_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = make_task()  # queue_length 8 over two ranks: 4 rows each
    g = torch.Generator().manual_seed(0)
    mine, theirs = torch.randn(2, 4, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    task.queue[:, :4] = mine
    monkeypatch.setattr(swav_module, "idist", TwoRanks(0, theirs))
    assert task.queue_capacity() == 4
    saved = task.state_dict()["queue"]
    torch.testing.assert_close(saved[:, :4], mine)
    torch.testing.assert_close(saved[:, 4:8], theirs)
    assert torch.equal(task.queue[:, :4], mine)  # saving leaves the live queue alone
    second = make_task(seed=1)
    monkeypatch.setattr(swav_module, "idist", TwoRanks(1, mine))
    second.load_state_dict(task.state_dict() | {"queue": saved})
    torch.testing.assert_close(second.queue[:, :4], theirs)
    assert not second.queue[:, 4:].any()


def test_sgd_steps_lower_the_loss(images: torch.Tensor) -> None:
    settings = SwavSettings(prototypes=8, feature_dim=16, hidden_dim=32, large_crops=2, small_crops=2,
                            freeze_prototypes_epochs=0, queue_length=0)
    task = make_task(settings)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    idx = torch.arange(len(images))
    losses_seen = []
    for _ in range(20):
        loss, _ = task.loss(images, idx, views(0))  # the same views every step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses_seen.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses_seen)
    assert losses_seen[-1] < 0.9 * losses_seen[0]
