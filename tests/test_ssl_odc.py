"""ODC (:mod:`ssl.tasks.odc`): memory and centroid updates, the small-cluster re-split, the k-means start, the loss.

Run as a module under ``torchrun`` (``python -m tests.test_ssl_odc OUT``) the
file is the 2-process worker of :func:`test_two_processes_keep_identical_memories`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.backbones import build_backbone
from ssl.losses import cluster_weights, odc_loss
from ssl.tasks.base import TaskContext
from ssl.tasks.odc import (
    Odc,
    OdcSettings,
    cluster_centroids,
    num_clusters,
    smallest_cluster,
    split_small_clusters,
    two_way_split,
    update_memory,
)
from tests.launch import torchrun

SIZE = 32
N = 64
DIST_N = 63  # odd: the ranks' shards differ in size
SETTINGS = OdcSettings(feature_dim=32, hidden_dim=64, images_per_cluster=8, kmeans_iterations=10)  # K 8, min 4


def context(n: int = N) -> TaskContext:
    return TaskContext(image_size=SIZE, num_images=n, batch_size=16, seed=0, total_steps=100)


def make_task(settings: OdcSettings = SETTINGS, n: int = N) -> Odc:
    torch.manual_seed(0)
    return Odc(build_backbone("tiny", 1), settings, context(n))


def batches(images: torch.Tensor, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = images.shape[0]
    return [(images[i : i + size], torch.arange(i, min(i + size, n))) for i in range(0, n, size)]


def unit_rows(n: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.fixture(scope="module")
def phantoms() -> torch.Tensor:
    from evaluate.protocol.task_data import DataChoice

    ds = DataChoice("phantom", None, 3, "0s", N).build("train", SIZE, False)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


@pytest.fixture(scope="module")
def started(phantoms: torch.Tensor) -> Odc:
    task = make_task()
    task.initialise(batches(phantoms))
    return task


def test_settings_and_cluster_counts() -> None:
    assert OdcSettings(crop_scale=[0.3, 1.0]).crop_scale == (0.3, 1.0)
    defaults = OdcSettings()
    assert num_clusters(defaults, 10**7) == 10000
    assert num_clusters(defaults, 640) == 64
    assert num_clusters(defaults, 5) == 2
    assert smallest_cluster(defaults, 10**7, 10000) == 20
    assert smallest_cluster(defaults, 640, 64) == 5
    assert smallest_cluster(defaults, 3, 2) == 1
    task = make_task()
    assert (task.num_clusters, task.min_cluster) == (8, 4)
    assert set(task.state_dict()) >= {"memory", "labels", "centroids", "iteration"}


def test_memory_update_is_the_normalised_average() -> None:
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    update_memory(memory, torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.8, 0.6]]), momentum=0.5)
    half = 1 / math.sqrt(2)
    expected = torch.tensor([[half, half], [0.0, 1.0], [half, half]])
    assert torch.allclose(memory, expected, atol=1e-6)
    memory = torch.tensor([[1.0, 0.0]])
    update_memory(memory, torch.tensor([0]), torch.tensor([[0.0, 1.0]]), momentum=0.25)  # (0.75, 0.25) normalised
    assert torch.allclose(memory, F.normalize(torch.tensor([[0.75, 0.25]]), dim=1))


def test_centroids_are_normalised_member_means() -> None:
    features = unit_rows(20, 5, seed=1)
    labels = torch.arange(20) % 3  # clusters 0-2; cluster 3 empty
    previous = unit_rows(4, 5, seed=2)
    centroids = cluster_centroids(features, labels, previous)
    for k in range(3):
        mean = features[labels == k].mean(dim=0)
        assert torch.allclose(centroids[k], mean / mean.norm(), atol=1e-6)
    assert torch.equal(centroids[3], previous[3])


def test_small_clusters_are_refilled_from_the_largest() -> None:
    memory = unit_rows(60, 8, seed=3)
    labels = torch.tensor([0] * 2 + [1] * 50 + [2] * 8)  # cluster 3 empty, cluster 0 tiny
    labels = labels[torch.randperm(60, generator=torch.Generator().manual_seed(4))]
    centroids = cluster_centroids(memory, labels, unit_rows(4, 8, seed=5))
    split_small_clusters(memory, labels, centroids, 5, 10, torch.Generator().manual_seed(0))
    sizes = torch.bincount(labels, minlength=4)
    assert sizes.min() >= 5 and sizes.sum() == 60
    for k in (0, 3):  # the refilled clusters' centroids follow their new members
        mean = memory[labels == k].mean(dim=0)
        assert torch.allclose(centroids[k], mean / mean.norm(), atol=1e-6)


def test_two_way_split_separates_blobs_and_halves_a_degenerate_cluster() -> None:
    g = torch.Generator().manual_seed(6)
    first = torch.tensor([5.0, 0.0, 0.0]) + 0.1 * torch.randn(10, 3, generator=g)
    second = torch.tensor([0.0, 5.0, 0.0]) + 0.1 * torch.randn(30, 3, generator=g)
    blobs = F.normalize(torch.cat([first, second]), dim=1)
    moved = two_way_split(blobs, 5, 10, torch.Generator().manual_seed(0))
    assert moved[:10].all() != moved[10:].any() and moved[:10].unique().numel() == moved[10:].unique().numel() == 1
    same = F.normalize(torch.ones(11, 3), dim=1)
    assert int(two_way_split(same, 3, 10, torch.Generator().manual_seed(0)).sum()) == 5


def test_initialise_clusters_every_image(started: Odc, phantoms: torch.Tensor) -> None:
    task = started
    assert task.training
    assert task.labels.min() >= 0 and task.labels.max() < task.num_clusters
    assert torch.bincount(task.labels, minlength=task.num_clusters).min() >= task.min_cluster
    assert torch.allclose(task.centroids.norm(dim=1), torch.ones(task.num_clusters), atol=1e-5)
    assert torch.allclose(task.memory.norm(dim=1), torch.ones(N), atol=1e-5)
    assert torch.equal(task.classifier.bias, torch.zeros(task.num_clusters))
    assert 0 < task.classifier.weight.std() < 0.02
    again = make_task()
    again.initialise(batches(phantoms))
    assert torch.equal(again.labels, task.labels) and torch.equal(again.centroids, task.centroids)
    larger = make_task()  # images of another size are resized to the context's
    larger.initialise(batches(F.interpolate(phantoms, size=48, mode="bilinear")))
    assert larger.labels.max() < larger.num_clusters
    with pytest.raises(ValueError, match="saw 48 of the 64"):
        make_task().initialise(batches(phantoms)[1:])


def test_loss_reaches_the_backbone_and_after_step_updates_the_memory(phantoms: torch.Tensor) -> None:
    task = make_task()
    task.initialise(batches(phantoms))
    with pytest.raises(RuntimeError):
        task.after_step()
    loss, logs = task.loss(phantoms[:16], torch.arange(16), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and logs["loss"] == pytest.approx(float(loss.detach()))
    assert logs["clusters_used"] == task.num_clusters
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.backbone.parameters())
    memory = task.memory.clone()
    task.after_step()
    assert torch.equal(task.memory[16:], memory[16:]) and not torch.equal(task.memory[:16], memory[:16])
    assert torch.allclose(task.memory.norm(dim=1), torch.ones(N), atol=1e-5)
    assert torch.equal(task.labels[:16], (task.memory[:16] @ task.centroids.t()).argmax(dim=1))
    assert int(task.iteration) == 1


def test_odc_loss_weights_closed_form() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    sizes = torch.tensor([1, 4])
    assert torch.allclose(cluster_weights(sizes, 0.5), torch.tensor([1.0, 0.5]))
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]
    expected = (1.0 * ce[0] + 0.5 * ce[1] + 0.5 * ce[2]) / (1.0 + 0.5 + 0.5)
    assert float(odc_loss(logits, labels, sizes, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_sgd_steps_lower_the_loss(phantoms: torch.Tensor) -> None:
    task = make_task(OdcSettings(**{**SETTINGS.__dict__, "centroid_every": 3}))
    task.initialise(batches(phantoms))
    optimiser = torch.optim.SGD(task.parameters(), lr=0.1, momentum=0.9)
    images, indices = phantoms[:32], torch.arange(32)
    losses = []
    for _ in range(9):
        loss, _ = task.loss(images, indices, torch.Generator().manual_seed(0))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        task.after_step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert torch.bincount(task.labels, minlength=task.num_clusters).min() >= task.min_cluster  # refreshed at 9


def test_two_processes_keep_identical_memories(tmp_path: Path) -> None:
    torchrun("tests.test_ssl_odc", [str(tmp_path / "rank0.pt")])
    shared = torch.load(tmp_path / "rank0.pt")
    single = make_task(n=DIST_N)
    single.initialise(batches(dist_images()))
    assert torch.allclose(shared["initial_memory"], single.memory, atol=1e-5)
    assert torch.equal(shared["initial_labels"], single.labels)


def dist_images() -> torch.Tensor:
    return torch.rand(DIST_N, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


def _worker(out: str) -> None:
    """Under torchrun: a shard per rank, the k-means start and two steps; every rank must hold the same state."""
    import ignite.distributed as idist

    from plumbing.distributed import distributed

    with distributed(torch.device("cpu")):
        rank, world = idist.get_rank(), idist.get_world_size()
        images = dist_images()
        task = make_task(OdcSettings(**{**SETTINGS.__dict__, "centroid_every": 2}), n=DIST_N)
        task.initialise([(images[rank::world], torch.arange(rank, DIST_N, world))])  # 32 and 31 images
        initial = {"initial_memory": task.memory.clone(), "initial_labels": task.labels.clone()}
        for step in range(2):
            local = torch.arange(step * 16 + rank * 8, step * 16 + rank * 8 + 8)
            loss, _ = task.loss(images[local], local, torch.Generator().manual_seed(step))
            loss.backward()
            task.after_step()
        for tensor in (task.memory, task.labels.float(), task.centroids):
            gathered = idist.all_gather(tensor[None])
            assert torch.equal(gathered[0], gathered[1]), "ranks disagree"
        if rank == 0:
            torch.save(initial, out)


if __name__ == "__main__":
    _worker(sys.argv[1])
