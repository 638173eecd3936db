"""MoCo v2: the InfoNCE loss in closed form, the queue, the key encoder's momentum update."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.backbones import build_backbone
from plumbing.seeding import generator as seeded_generator
from ssl.losses import info_nce, position_cross_entropy
from ssl.tasks import TaskContext, task_settings
from ssl.tasks.moco import Moco, key_momentum, queue_size


def _moco(**overrides: object) -> Moco:
    torch.manual_seed(0)
    context = TaskContext(image_size=32, num_images=64, batch_size=8, seed=0, total_steps=100)
    return Moco(build_backbone("tiny", 1), task_settings("moco", overrides), context)


def test_info_nce_closed_form() -> None:
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    k = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    expected = 0.0
    for n in range(2):
        logits = [float(q[n] @ k[n]) / t] + [float(q[n] @ u) / t for u in queue]
        expected += -(logits[0] - math.log(sum(math.exp(v) for v in logits))) / 2
    assert math.isclose(float(info_nce(q, k, queue, t)), expected, rel_tol=1e-6)


def test_position_cross_entropy_is_the_mean_negative_log_likelihood() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 3])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 3)) + math.log(math.e / (math.e + 3))) / 2
    assert math.isclose(float(position_cross_entropy(logits, labels)), expected, rel_tol=1e-6)


def test_queue_is_capped_by_the_images_and_a_whole_number_of_batches() -> None:
    settings = task_settings("moco")
    assert queue_size(settings, TaskContext(32, 64, 8, 0, 100)) == 64
    assert queue_size(settings, TaskContext(32, 70, 8, 0, 100)) == 64
    assert queue_size(settings, TaskContext(32, 5, 8, 0, 100)) == 8  # at least one batch
    assert queue_size(task_settings("moco", {"queue_length": 20}), TaskContext(32, 640, 8, 0, 100)) == 16


def test_enqueue_replaces_the_oldest_keys_and_wraps_around() -> None:
    moco = _moco(queue_length=16, feature_dim=4)
    assert moco.queue.shape == (16, 4)
    keys = [torch.full((8, 4), float(i)) for i in range(3)]
    moco.enqueue(keys[0])
    assert int(moco.pointer) == 8 and torch.all(moco.queue[:8] == 0)
    moco.enqueue(keys[1])
    assert int(moco.pointer) == 0 and torch.all(moco.queue[8:] == 1)
    moco.enqueue(keys[2])
    assert torch.all(moco.queue[:8] == 2) and torch.all(moco.queue[8:] == 1)


def test_key_encoder_follows_by_momentum_and_gets_no_gradient() -> None:
    moco = _moco(momentum=0.9, momentum_schedule="constant")
    online = [p.detach().clone() for p in moco.backbone.parameters()]
    with torch.no_grad():
        for p in moco.backbone.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in moco.key_backbone.parameters()]
    moco.momentum_update()
    for key, old, q in zip(moco.key_backbone.parameters(), before, online, strict=True):
        torch.testing.assert_close(key, 0.9 * old + 0.1 * (q + 1.0))
    images = torch.rand(8, 1, 32, 32)
    loss, logs = moco.loss(images, torch.arange(8), torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(logs["loss"])
    assert all(p.grad is None for p in moco.key_backbone.parameters())
    assert all(p.grad is not None for p in moco.backbone.parameters())
    assert int(moco.pointer) == 8  # the batch's keys entered the queue


def test_the_cosine_schedule_rises_from_the_base_to_one() -> None:
    assert key_momentum(0, 100, 0.9, "cosine") == pytest.approx(0.9)
    assert key_momentum(50, 100, 0.9, "cosine") == pytest.approx(0.95)
    assert key_momentum(100, 100, 0.9, "cosine") == pytest.approx(1.0)
    assert key_momentum(25, 100, 0.9, "cosine") == pytest.approx(1 - 0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert key_momentum(70, 100, 0.9, "constant") == 0.9
    values = [key_momentum(t, 100, 0.9, "cosine") for t in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_the_key_encoder_follows_the_schedule_step_by_step_and_resumes_it() -> None:
    moco = _moco(momentum=0.9)  # 100 steps from 0.9
    used = [moco.momentum_update() for _ in range(3)]
    assert used == pytest.approx([key_momentum(t, 100, 0.9, "cosine") for t in range(3)])
    again = _moco(momentum=0.9)
    again.load_state_dict(moco.state_dict())  # the step counter is a buffer: a checkpoint resumes the schedule
    assert int(again.step) == 3 and again.momentum() == pytest.approx(key_momentum(3, 100, 0.9, "cosine"))
    _, logs = moco.loss(torch.rand(8, 1, 32, 32), torch.arange(8), torch.Generator().manual_seed(0))
    assert logs["momentum"] == pytest.approx(key_momentum(3, 100, 0.9, "cosine"))


def test_the_queue_starts_with_keys_of_real_images() -> None:
    moco = _moco(queue_length=16, feature_dim=4)  # 64 images, batch 8: a queue of 16
    images = torch.rand(24, 1, 32, 32)
    moco.initialise((images[i : i + 8], torch.arange(i, i + 8)) for i in range(0, 24, 8))
    assert int(moco.pointer) == 0 and moco.queue.shape == (16, 4)
    torch.testing.assert_close(moco.queue.norm(dim=1), torch.ones(16))
    with torch.no_grad():  # the first two batches' keys, their views drawn as initialise draws them
        draw = seeded_generator(0, "moco queue", 0)
        expected = [F.normalize(moco.key_head(moco.key_backbone(moco.views(images[i : i + 8], draw))), dim=1)
                    for i in (0, 8)]
    torch.testing.assert_close(moco.queue, torch.cat(expected))
