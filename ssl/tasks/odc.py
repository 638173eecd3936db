"""ODC, Online Deep Clustering (Zhan et al. 2020): classify every image into its cluster while the clusters move.

As mmselfsup / OpenSelfSup implement it. A neck ``D -> hidden_dim -> BN -> ReLU
-> feature_dim`` on the pooled backbone feature gives ``f``; a linear
classifier maps ``f`` to ``K`` cluster logits. Two memories, buffers of the
module (so a checkpoint holds them):

- the samples memory: one L2-normalised feature ``v_i`` per training image
  ``[N, feature_dim]`` and its cluster label ``y_i`` ``[N]``;
- the centroids memory ``c_k`` ``[K, feature_dim]``, each the normalised mean
  ``c_k = sum_{y_i = k} v_i / ||sum_{y_i = k} v_i||`` of its members (an empty
  cluster keeps its centroid). Labels are nearest centroids by cosine,
  ``y_i = argmax_k c_k . v_i``.

Start (:meth:`Odc.initialise`, once): the features of every image, without
augmentation and in eval mode, fill the samples memory; spherical k-means
(cosine assignment, normalised-mean update, ``kmeans_iterations`` rounds from
``K`` distinct images drawn with the step's seed - random initialisation, as the
reference's faiss k-means) gives the labels, then the centroids; small
clusters are re-split (below) and the classifier is re-drawn,
``W ~ N(0, 0.01^2)``, ``b = 0``, as the reference re-initialises its head
after clustering.

Each step (:meth:`Odc.loss`): one view (random resized crop of scale
``crop_scale``, mirror for RGB, intensity jitter with probability
``jitter_p``) and the re-weighted cluster
classification :func:`ssl.losses.odc_loss`,
``L = sum_n w_{y_n} CE(z_n, y_n) / sum_n w_{y_n}``, ``w_k = n_k^-loss_power``
with ``n_k`` the cluster sizes over the samples memory. After the optimiser
step (:meth:`Odc.after_step`), for the images ``i`` of the global batch with
new normalised features ``f_i``, in the reference's form (mmselfsup
``ODCMemory.update_samples_memory``: the *new* feature gets the momentum
``m`` = ``memory_momentum``)::

    v_i <- ((1 - m) v_i + m f_i) / ||(1 - m) v_i + m f_i||,    y_i <- argmax_k c_k . v_i

and every ``centroid_every`` iterations all centroids are recomputed and the
small clusters re-split.

Re-splitting (:func:`split_small_clusters`, the reference's
``deal_with_small_clusters``): the clusters ``S`` with fewer than
``min_cluster`` members first lose their members to the nearest centroid
outside ``S``; then, for each ``e`` in ``S`` in order, the currently largest
cluster is split by spherical 2-means and its second part takes label ``e``;
both centroids are recomputed. Where 2-means leaves a part below
``min_cluster`` (the reference only catches an *empty* part, by a random
halving) the cluster is halved along the 2-means direction instead: the half
nearer the second centroid (by ``c_2 . v - c_1 . v``) moves. So after a
re-split no cluster is below ``min_cluster`` and the image count is unchanged.

Short runs on radiographs: three defaults differ from the reference's. Its
views (crops down to a fifth of the image, ``crop_scale = (0.2, 1)``;
intensity jitter with probability 0.8) and memory momentum 0.5 kept the loss
at ``ln K`` on phantoms and the monitor's k-NN at the random start's level
(32 px, 256 images, ``tiny``, 48 steps at lr 0.03: loss 3.22 to 3.23,
``ln 25`` = 3.22; k-NN 0.26 to 0.26): the clusters of a random backbone are
set by the images' intensities, which the jitter scrambles and small crops
change, and a memory that takes half of every new feature relabels images
faster than the classifier can follow. With crops of at least half the
image, no jitter (``jitter_p = 0``) and memory momentum 0.1 the loss fell
from 3.18 to 2.64 and the k-NN rose from 0.26 to 0.38 (64 steps at lr 0.03);
the milder views alone reached 2.96 and 0.29, the momentum alone 3.18 and
0.29. The reference's values:
``--set odc.crop_scale=[0.2,1] --set odc.jitter_p=0.8 --set
odc.memory_momentum=0.5``.

Small data sets: the reference's 10000 clusters suit ImageNet (128 images a
cluster). Here ``K = min(clusters, max(2, N // images_per_cluster))``
(:func:`num_clusters`), and the smallest cluster allowed is
``max(1, min(min_cluster, N // (2K)))`` (:func:`smallest_cluster`): at most
half the mean cluster size, which makes the re-split always possible (the
largest cluster holds at least ``N / (K - 1) >= 2 min_cluster`` images while
one is empty). With the defaults and ``N = 640`` that is 64 clusters of at
least 5 images. At least 2 images are needed.

Several processes: each rank's batch features and indices are gathered
(:func:`plumbing.distributed.gather_rows`), so every rank applies the same memory update to an
identical samples memory and relabels the same rows. The clustering steps that
sum many rows (k-means, centroid refresh, re-split; on a GPU their sums use
atomic additions whose rounding may differ between processes) run on rank 0
alone, which broadcasts the labels and centroids to the others, so the
memories are identical on every rank after each refresh.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import Backbone
from plumbing.distributed import gather_rows, is_main_process
from plumbing.seeding import generator as seeded_generator

from ..losses import odc_loss
from ..views import intensity_jitter, resized_crops
from .base import PretextTask, TaskContext, check_settings, in_unit_interval

CLASSIFIER_STD = 0.01
CHUNK_ELEMENTS = 1 << 24
"""Similarities computed at once when assigning features to centroids (64 MiB in float32)."""


@dataclass(frozen=True)
class OdcSettings:
    """mmselfsup's ODC defaults (ImageNet) but the views and memory momentum of short runs (module docstring);
    ``clusters`` and ``min_cluster`` shrink for small data."""

    clusters: int = 10000
    feature_dim: int = 256
    hidden_dim: int = 512
    memory_momentum: float = 0.1
    centroid_every: int = 10
    min_cluster: int = 20
    loss_power: float = 0.5
    kmeans_iterations: int = 20
    images_per_cluster: int = 10
    crop_scale: tuple[float, float] = (0.5, 1.0)
    jitter_p: float = 0.0
    jitter_amount: float = 0.4

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        check_settings("odc", {
            "clusters >= 2": self.clusters >= 2, "feature_dim >= 1": self.feature_dim >= 1,
            "hidden_dim >= 1": self.hidden_dim >= 1, "centroid_every >= 1": self.centroid_every >= 1,
            "min_cluster >= 0": self.min_cluster >= 0, "loss_power >= 0": self.loss_power >= 0,
            "kmeans_iterations >= 1": self.kmeans_iterations >= 1,
            "images_per_cluster >= 1": self.images_per_cluster >= 1,
            "0 < crop_scale[0] <= crop_scale[1] <= 1": 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
        } | in_unit_interval(self, "memory_momentum", "jitter_p", "jitter_amount"))


def num_clusters(settings: OdcSettings, num_images: int) -> int:
    """``K = min(clusters, max(2, N // images_per_cluster))``: fewer clusters for small data sets."""
    return min(settings.clusters, max(2, num_images // settings.images_per_cluster))


def smallest_cluster(settings: OdcSettings, num_images: int, clusters: int) -> int:
    """``max(1, min(min_cluster, N // (2K)))``: the re-split threshold, at most half the mean cluster size."""
    return max(1, min(settings.min_cluster, num_images // (2 * clusters)))


def update_memory(memory: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """``memory[i] <- normalise((1 - m) memory[i] + m f_i)`` in place for the rows ``indices``."""
    mixed = (1.0 - momentum) * memory[indices] + momentum * features.to(memory.dtype)
    memory[indices] = F.normalize(mixed, dim=1)


def nearest_centroids(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``argmax_k c_k . v`` for every row ``v`` of ``features`` (in chunks of rows)."""
    rows = max(1, CHUNK_ELEMENTS // centroids.shape[0])
    return torch.cat([(chunk @ centroids.t()).argmax(dim=1) for chunk in features.split(rows)])


def cluster_centroids(features: torch.Tensor, labels: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The normalised mean of each cluster's features ``[K, D]``; an empty cluster keeps its ``previous`` row."""
    sums = torch.zeros_like(previous).index_add_(0, labels, features.to(previous.dtype))
    counts = torch.bincount(labels, minlength=previous.shape[0])
    return torch.where((counts > 0)[:, None], F.normalize(sums, dim=1), previous)


def spherical_kmeans(features: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Labels ``[N]`` of k-means on normalised ``features`` by cosine, started from ``k`` distinct random rows."""
    start = torch.randperm(features.shape[0], generator=generator)[:k].to(features.device)
    centroids = features[start].clone()
    for _ in range(iterations):
        centroids = cluster_centroids(features, nearest_centroids(features, centroids), centroids)
    return nearest_centroids(features, centroids)


def two_way_split(features: torch.Tensor, min_size: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Which rows of a cluster (``[n]`` booleans) move out: 2-means' second part, or a halving (module docstring)."""
    start = torch.randperm(features.shape[0], generator=generator)[:2].to(features.device)
    centroids = features[start].clone()
    for _ in range(iterations):
        centroids = cluster_centroids(features, nearest_centroids(features, centroids), centroids)
    moved = nearest_centroids(features, centroids) == 1
    if min(int(moved.sum()), int((~moved).sum())) >= min_size:
        return moved
    toward_second = features @ (centroids[1] - centroids[0])
    order = torch.argsort(toward_second, descending=True, stable=True)
    moved = torch.zeros_like(moved)
    moved[order[: features.shape[0] // 2]] = True
    return moved


def split_small_clusters(
    memory: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, min_size: int, iterations: int,
    generator: torch.Generator,
) -> None:
    """Re-fill every cluster below ``min_size`` by splitting the largest, in place (module docstring).

    ``min_size`` must be at most ``N // (2K)`` (:func:`smallest_cluster`), so that some cluster is large enough.
    """
    k = centroids.shape[0]
    small = torch.nonzero(torch.bincount(labels, minlength=k) < min_size).flatten()
    if small.numel() == 0:
        return
    kept = torch.ones(k, dtype=torch.bool, device=labels.device)
    kept[small] = False
    kept = torch.nonzero(kept).flatten()
    members = torch.isin(labels, small)
    labels[members] = kept[nearest_centroids(memory[members], centroids[kept])]
    for empty in small.tolist():
        largest = int(torch.bincount(labels, minlength=k).argmax())
        rows = torch.nonzero(labels == largest).flatten()
        labels[rows[two_way_split(memory[rows], min_size, iterations, generator)]] = empty
        for cluster in (largest, empty):
            centroids[cluster] = F.normalize(memory[labels == cluster].sum(dim=0), dim=0)


def broadcast_from_main(*tensors: torch.Tensor) -> None:
    """Copy rank 0's values into every rank's ``tensors`` (nothing to do in one process)."""
    if idist.get_world_size() == 1:
        return
    for tensor in tensors:
        tensor.copy_(idist.broadcast(tensor.clone(), src=0))


class Odc(PretextTask):
    name = "odc"

    def __init__(self, backbone: Backbone, settings: OdcSettings, context: TaskContext) -> None:
        super().__init__(backbone, settings, context)
        n, dim = context.num_images, settings.feature_dim
        self.num_clusters = num_clusters(settings, n)
        self.min_cluster = smallest_cluster(settings, n, self.num_clusters)
        self.neck = nn.Sequential(
            OrderedDict(
                fc0=nn.Linear(backbone.feature_dim, settings.hidden_dim),
                bn0=nn.BatchNorm1d(settings.hidden_dim),
                relu=nn.ReLU(),
                fc1=nn.Linear(settings.hidden_dim, dim),
            )
        )
        self.classifier = nn.Linear(dim, self.num_clusters)
        self.register_buffer("memory", torch.zeros(n, dim))
        self.register_buffer("labels", torch.zeros(n, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(self.num_clusters, dim))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The neck's output ``[B, feature_dim]`` (not normalised)."""
        return self.neck(self.backbone(images))

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """``W ~ N(0, 0.01^2)`` from the step's seed (the same on every rank), ``b = 0``."""
        draw = seeded_generator(self.context.seed, "odc-classifier")
        weight = self.classifier.weight
        weight.copy_(torch.randn(weight.shape, generator=draw) * CLASSIFIER_STD)
        self.classifier.bias.zero_()

    @torch.no_grad()
    def initialise(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill the samples memory from every image, cluster it by k-means and re-draw the classifier."""
        device, size = self.memory.device, self.context.image_size
        features = [self.memory.new_zeros(0, self.settings.feature_dim)]
        indices = [self.labels.new_zeros(0)]
        was_training = self.training
        self.eval()
        for images, idx in batches:
            images = images.to(device)
            if images.shape[-2:] != (size, size):
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            features.append(F.normalize(self.features(images).float(), dim=1))
            indices.append(idx.to(device))
        self.train(was_training)
        everything, rows = gather_rows(torch.cat(features)), gather_rows(torch.cat(indices))
        seen = torch.zeros_like(self.labels, dtype=torch.bool)
        seen[rows] = True
        if not bool(seen.all()):
            raise ValueError(f"ODC's k-means start saw {int(seen.sum())} of the {seen.numel()} training images")
        self.memory[rows] = everything
        if is_main_process():
            s = self.settings
            draw = seeded_generator(self.context.seed, "odc-kmeans")
            self.labels.copy_(spherical_kmeans(self.memory, self.num_clusters, s.kmeans_iterations, draw))
            self.centroids.copy_(cluster_centroids(self.memory, self.labels, self.centroids))
            split_small_clusters(self.memory, self.labels, self.centroids, self.min_cluster, s.kmeans_iterations, draw)
        broadcast_from_main(self.labels, self.centroids)
        self.reset_classifier()

    def loss(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.settings
        views = resized_crops(images, self.context.image_size, s.crop_scale, generator, flip=True)
        views = intensity_jitter(views, s.jitter_p, s.jitter_amount, generator)
        features = self.features(views)
        logits = self.classifier(features)
        indices = indices.to(self.labels.device)
        sizes = torch.bincount(self.labels, minlength=self.num_clusters)
        loss = odc_loss(logits, self.labels[indices], sizes, s.loss_power)
        self._batch = (F.normalize(features.detach().float(), dim=1), indices)
        return loss, {"loss": float(loss.detach()), "clusters_used": float((sizes > 0).sum())}

    @torch.no_grad()
    def after_step(self) -> None:
        """Update the samples memory with the last batch; refresh the clusters every ``centroid_every`` steps."""
        if self._batch is None:
            raise RuntimeError("ODC's after_step needs the features of a loss call")
        features, indices = (gather_rows(t) for t in self._batch)
        self._batch = None
        update_memory(self.memory, indices, features, self.settings.memory_momentum)
        self.labels[indices] = nearest_centroids(self.memory[indices], self.centroids)
        self.iteration += 1
        if int(self.iteration) % self.settings.centroid_every == 0:
            self.refresh_clusters()

    @torch.no_grad()
    def refresh_clusters(self) -> None:
        """Recompute every centroid and re-split the small clusters (rank 0, then broadcast)."""
        if is_main_process():
            s = self.settings
            self.centroids.copy_(cluster_centroids(self.memory, self.labels, self.centroids))
            draw = seeded_generator(self.context.seed, "odc-split", int(self.iteration))
            split_small_clusters(self.memory, self.labels, self.centroids, self.min_cluster, s.kmeans_iterations, draw)
        broadcast_from_main(self.labels, self.centroids)
