"""MoCo v2 (Chen et al. 2020): contrast two views of an image against a queue of earlier keys.

Two views of every image (random resized crop of scale ``crop_scale``,
intensity jitter with probability ``jitter_p``, grayscale for RGB with
probability ``grayscale_p``, Gaussian blur with probability ``blur_p``, a
mirror for RGB only). The query ``q`` is the L2-normalised output of the
backbone and the MLP head ``D -> D -> ReLU -> feature_dim``; the key ``k`` that of
a *key encoder*, a copy of both that is not trained by gradients but follows
them by ``theta_k <- m_t theta_k + (1 - m_t) theta_q`` before step ``t``
(:func:`key_momentum`). The loss is :func:`ssl.losses.info_nce` of ``q``,
``k`` and the queue; then the keys of the global batch replace the oldest
queue entries.

The key encoder's momentum: ``m_t = 1 - (1 - m_0) (1 + cos(pi t / T)) / 2``
before step ``t`` of a run of ``T`` steps (:func:`key_momentum`,
``momentum_schedule = "cosine"``), from ``m_0`` = ``momentum`` (0.99) to 1,
as BYOL and MoCo v3 do; the reference keeps ``m = 0.999`` constant for about
a million steps (``--set moco.momentum=0.999 --set
moco.momentum_schedule=constant``). A faster key encoder does not make short
runs learn: with ``m_0`` = 0.79 (the key encoder a tenth of a 48-step run
behind) the queries collapsed on phantoms (mean cosine between the images of
a batch 0.997) and the loss climbed back to ``ln(queue + 1)``, while from
0.99 it fell; the MoCo paper's ablation also finds 0.9 worse than 0.99 and no
learning at 0.

Short runs. With MoCo v2's views (crops down to a fifth of the image,
intensity jitter at p = 0.8) and temperature 0.2, the loss stayed near
``ln(queue + 1)`` on phantoms (256 images at 32 px, ``tiny``, 64 steps:
5.54 to 5.53 at lr 0.03; at lr 0.1 with temperature 0.1 it fell to 4.80 and
climbed back to 5.51) and the monitor's k-NN moved within its epoch-to-epoch
spread (0.32 to 0.35 and to 0.34). As for ODC (:mod:`ssl.tasks.odc`), a random
backbone tells radiographs apart by intensity, which the jitter scrambles.
The defaults here are crops of at least half the image, no jitter and
temperature 0.1 (MoCo v1's 0.07 is near): at lr 0.1 the loss fell from 5.19
to 4.17 and the k-NN rose from 0.32 to 0.37 (seed 1: 5.20 to 4.21, 0.25 to
0.30); with temperature 0.2 it fell less (5.37 to 4.59, k-NN 0.32 to 0.34).
MoCo v2's values: ``--set moco.crop_scale=[0.2,1] --set moco.jitter_p=0.8
--set moco.temperature=0.2``.

The queue starts filled with the key encoder's keys of views of the first
training images (:meth:`Moco.initialise`), not with random unit vectors as in
the reference: random vectors are easy negatives, so the reference's loss
climbs while the queue fills with real keys (measured: 4.1 to 5.2 over 24
steps, towards ``ln(queue + 1)``) and says nothing of learning until then.

The queue holds ``min(queue_length, N_b)`` keys, ``N_b`` the training images
rounded down to whole global batches (at least one batch): a queue longer
than the data set would hold several stale keys of every image, the one being
contrasted among them (capped, it holds at most about one epoch of keys, which
may still include an older key of that image).

Several processes: the keys of all ranks enter every rank's queue (gathered,
so the queues stay identical) and the key encoder sees the global batch
*shuffled* across the ranks (rank 0 draws the permutation), so that its batch
normalisation statistics do not mix a query with its own key - MoCo's
shuffled BatchNorm. In one process the batch is one batch-norm group and the
shuffle changes nothing.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import Backbone
from plumbing.distributed import gather_rows
from plumbing.ema import ema_update
from plumbing.seeding import generator as seeded_generator

from ..losses import info_nce
from ..views import gaussian_blur, intensity_jitter, random_grayscale, resized_crops
from .base import PretextTask, TaskContext, check_settings, in_unit_interval


@dataclass(frozen=True)
class MocoSettings:
    queue_length: int = 65536
    feature_dim: int = 128
    momentum: float = 0.99
    momentum_schedule: str = "cosine"
    temperature: float = 0.1
    crop_scale: tuple[float, float] = (0.5, 1.0)
    jitter_p: float = 0.0
    jitter_amount: float = 0.4
    grayscale_p: float = 0.2
    blur_p: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        check_settings("moco", {
            "queue_length >= 1": self.queue_length >= 1, "feature_dim >= 1": self.feature_dim >= 1,
            "0 <= momentum < 1": 0 <= self.momentum < 1,
            "momentum_schedule in (constant, cosine)": self.momentum_schedule in MOMENTUM_SCHEDULES,
            "temperature > 0": self.temperature > 0,
            "0 < crop_scale[0] <= crop_scale[1] <= 1": 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
        } | in_unit_interval(self, "jitter_p", "jitter_amount", "grayscale_p", "blur_p"))


MOMENTUM_SCHEDULES = ("constant", "cosine")


def key_momentum(step: int, total_steps: int, base: float, schedule: str) -> float:
    """``m_t`` before step ``t`` (counted from 0) of ``T`` = ``total_steps``: ``base`` (``constant``) or
    ``1 - (1 - base) (1 + cos(pi t / T)) / 2`` (``cosine``: ``base`` at the start, 1 at the end)."""
    if schedule == "constant":
        return base
    return 1 - (1 - base) * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1))) / 2


def queue_size(settings: MocoSettings, context: TaskContext) -> int:
    """Keys in the queue: ``min(queue_length, N rounded down to whole global batches)``, at least one batch."""
    batch = context.batch_size
    whole = max(batch, context.num_images // batch * batch)
    return max(batch, min(settings.queue_length // batch * batch, whole))


def mlp_head(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(width, width), relu=nn.ReLU(), fc2=nn.Linear(width, out)))


class Moco(PretextTask):
    name = "moco"

    def __init__(self, backbone: Backbone, settings: MocoSettings, context: TaskContext) -> None:
        super().__init__(backbone, settings, context)
        self.head = mlp_head(backbone.feature_dim, settings.feature_dim)
        self.key_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        queue = F.normalize(torch.randn(queue_size(settings, context), settings.feature_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # checkpointed: the schedule resumes

    @torch.no_grad()
    def initialise(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill the queue with keys of views of the first training images: each rank keys up to its share of the
        queue from its own images (views drawn with the step's seed and the rank), the keys of every rank are
        gathered in rank order and the first ``queue`` of them kept, so the queues are identical."""
        size = self.queue.shape[0]
        share = -(-size // idist.get_world_size())
        draw = seeded_generator(self.context.seed, "moco queue", idist.get_rank())
        keys = [self.queue.new_zeros(0, self.queue.shape[1])]
        for images, _ in batches:
            if sum(len(k) for k in keys) >= share:
                break
            views = self.views(images.to(self.queue.device), draw)
            keys.append(F.normalize(self.key_head(self.key_backbone(views)).float(), dim=1).to(self.queue.dtype))
        mine = torch.cat(keys)[:share]
        everything = gather_rows(mine)[:size]
        self.queue[: len(everything)] = everything
        self.pointer.fill_(len(everything) % size)

    def views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = self.settings
        x = resized_crops(images, self.context.image_size, s.crop_scale, generator, flip=True)
        x = intensity_jitter(x, s.jitter_p, s.jitter_amount, generator)
        x = random_grayscale(x, s.grayscale_p, generator)
        return gaussian_blur(x, s.blur_p, generator)

    def momentum(self) -> float:
        """``m_t`` of the coming step (:func:`key_momentum`)."""
        total = self.context.total_steps
        return key_momentum(int(self.step), total, self.settings.momentum, self.settings.momentum_schedule)

    def momentum_update(self) -> float:
        """``theta_k <- m_t theta_k + (1 - m_t) theta_q`` for the backbone's and the head's parameters
        (:func:`plumbing.ema.ema_update`; the key encoder keeps its own batch-norm statistics); returns ``m_t``."""
        m = self.momentum()
        for online, key in ((self.backbone, self.key_backbone), (self.head, self.key_head)):
            ema_update(key, online, m, buffers="keep")
        self.step += 1
        return m

    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> torch.Tensor:
        """Normalised keys of ``views``, the global batch shuffled over the processes for the key encoder."""
        world = idist.get_world_size()
        if world == 1:
            return F.normalize(self.key_head(self.key_backbone(views)).float(), dim=1)
        everything = idist.all_gather(views)
        order = idist.broadcast(torch.randperm(everything.shape[0], device=views.device), src=0)
        mine = order.view(world, -1)[idist.get_rank()]
        keys = F.normalize(self.key_head(self.key_backbone(everything[mine])).float(), dim=1)
        gathered = idist.all_gather(keys)
        restored = torch.empty_like(gathered)
        restored[order] = gathered
        return restored.view(world, -1, keys.shape[1])[idist.get_rank()]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """The keys of the global batch replace the oldest entries of the queue."""
        keys = idist.all_gather(keys) if idist.get_world_size() > 1 else keys
        start, n = int(self.pointer), keys.shape[0]
        rows = torch.arange(start, start + n, device=keys.device) % self.queue.shape[0]
        self.queue[rows] = keys.to(self.queue.dtype)
        self.pointer.fill_((start + n) % self.queue.shape[0])

    def loss(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        query_views, key_views = self.views(images, generator), self.views(images, generator)
        momentum = self.momentum_update()
        query = F.normalize(self.head(self.backbone(query_views)).float(), dim=1)
        key = self.keys(key_views)
        loss = info_nce(query, key, self.queue.clone(), self.settings.temperature)
        self.enqueue(key)
        return loss, {"loss": float(loss.detach()), "momentum": momentum}
