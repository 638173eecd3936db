"""SwAV (Caron et al. 2020): predict the Sinkhorn cluster code of one crop of an image from its other crops.

Multi-crop views of every image: ``large_crops`` random resized crops at the
image size (area scale ``large_scale``) and ``small_crops`` at
``max(8, round(size * small_fraction))`` pixels (scale ``small_scale``,
:func:`small_crop_size`), each with intensity jitter (probability
``jitter_p``) and Gaussian blur (``blur_p``), mirrored for RGB only. The
backbone sees the crops of one resolution as one batch; the projection head
``D -> hidden_dim -> BN -> ReLU -> feature_dim`` sees all of them, and its
output is L2-normalised: the embeddings ``z``. The ``K`` prototypes ``c_k``
(rows of a bias-free linear layer) are set to unit norm at the start of every
step, so the scores ``s = z C^T`` are cosine similarities. ``K`` is
``prototypes`` but at most one prototype per :data:`IMAGES_PER_PROTOTYPE`
training images (:func:`prototype_count`): ImageNet's 3,000 share about 430
images each.

Codes: the detached scores of each large crop ``i`` give
``q_i = sinkhorn(s_i)`` (:func:`ssl.losses.sinkhorn` with ``epsilon`` and
``sinkhorn_iterations``), the soft assignment that spreads the batch equally
over the prototypes. The loss is :func:`ssl.losses.swav_loss`, the swapped
prediction ``L = 1/|A| sum_{i in A} 1/(V - 1) sum_{v != i} -1/N sum_n sum_k
q_i[n, k] log p_v[n, k]`` with ``p_v = softmax(s_v / temperature)``, ``A``
the large crops and ``V`` all crops.

Frozen prototypes: in the first ``freeze_prototypes_epochs`` epochs the scores
are computed with the prototypes detached, so they get no gradient (``grad``
stays ``None`` after the trainer's ``zero_grad(set_to_none=True)``) and SGD
skips them entirely - no momentum, no weight decay. The reference clears
their gradient after the backward pass to the same effect; the gradient of
everything else is unchanged.

Queue: from epoch ``queue_start_epoch`` the embeddings of every batch's large
crops enter one queue per large crop, newest first (the oldest drop out).
Once a queue is full, the scores of its entries on the current prototypes are
put before the batch's scores for Sinkhorn - more rows to spread over ``K``
prototypes when the batch is small - and only the batch's rows of the codes
are kept. A queue holds at most the data set's ``N`` images (a longer one
would hold the same images twice). The queues and their fill count are buffers, so a checkpoint holds
them. The epoch is a plain attribute: the trainer calls :meth:`Swav.start_epoch`
at the start of every epoch, the first one after a resume included.

Short runs. With the reference's views (2 x 224 + 6 x 96 crops, large ones
down to 14 % of the image, intensity jitter at p = 0.8) the loss went to
``ln K`` on phantoms and stayed there: every embedding alike, the codes even,
nothing learnt (256 images at 32 px, ``tiny``, 64 steps at lr 0.1: 3.73 to
3.40 with 30 prototypes, 7.88 to 7.52 with 3,000 and the views below). Small
crops of 5-14 % of a 32 px radiograph hold nothing an image's other crops
could be told from, and the jitter scrambles the intensities by which a
random backbone tells radiographs apart. The defaults here are two crops of
at least half the image, no small crops, no jitter and the prototype cap:
with them the loss fell from 3.60 to 2.59 and the monitor's k-NN rose from
0.27 to 0.35 in the same 64 steps. The reference's views: ``--set
swav.large_scale=[0.14,1] --set swav.small_crops=6 --set swav.jitter_p=0.8``.

Several processes: Sinkhorn normalises over the global batch
(:func:`plumbing.distributed.sum_over_ranks`); each rank keeps its own queue
of ``min(queue_length, N) // world size`` rows, the reference's share, so the
global Sinkhorn sees that many queued rows. The buffer always has
``queue_length`` rows. A checkpoint (written by rank 0) holds the queues of
every rank side by side - rank ``r``'s rows at ``[r * c, (r + 1) * c)``,
``c`` the per-rank capacity - gathered when the state is saved, and each rank
takes its own rows back on loading, so a resumed step goes on exactly (the
number of processes is part of a step's key, so it resumes under as many).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import Backbone
from plumbing.distributed import sum_over_ranks
from plumbing.errors import UserError

from ..losses import sinkhorn, swav_loss
from ..views import gaussian_blur, intensity_jitter, resized_crops
from .base import PretextTask, TaskContext, check_settings, in_unit_interval

SMALLEST_CROP = 8
IMAGES_PER_PROTOTYPE = 8
"""At most one prototype per this many training images (:func:`prototype_count`)."""


@dataclass(frozen=True)
class SwavSettings:
    prototypes: int = 3000
    feature_dim: int = 128
    hidden_dim: int = 2048
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    large_crops: int = 2
    small_crops: int = 0
    large_scale: tuple[float, float] = (0.5, 1.0)
    small_scale: tuple[float, float] = (0.05, 0.14)
    small_fraction: float = 96 / 224
    freeze_prototypes_epochs: int = 1
    queue_length: int = 3840
    queue_start_epoch: int = 15
    jitter_p: float = 0.0
    jitter_amount: float = 0.4
    blur_p: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "large_scale", tuple(self.large_scale))
        object.__setattr__(self, "small_scale", tuple(self.small_scale))
        check_settings("swav", {
            "prototypes >= 2": self.prototypes >= 2, "feature_dim >= 1": self.feature_dim >= 1,
            "hidden_dim >= 1": self.hidden_dim >= 1, "temperature > 0": self.temperature > 0,
            "epsilon > 0": self.epsilon > 0, "sinkhorn_iterations >= 1": self.sinkhorn_iterations >= 1,
            "small_crops >= 0": self.small_crops >= 0, "0 < small_fraction <= 1": 0 < self.small_fraction <= 1,
            "queue_length >= 0": self.queue_length >= 0,
            "freeze_prototypes_epochs >= 0": self.freeze_prototypes_epochs >= 0,
            "0 < large_scale[0] <= large_scale[1] <= 1": 0 < self.large_scale[0] <= self.large_scale[1] <= 1,
            "0 < small_scale[0] <= small_scale[1] <= 1": 0 < self.small_scale[0] <= self.small_scale[1] <= 1,
        } | in_unit_interval(self, "jitter_p", "jitter_amount", "blur_p"))
        if self.large_crops < 1 or self.large_crops + self.small_crops < 2:
            raise UserError(
                f"swav needs a large crop and at least 2 crops in all, not {self.large_crops} large "
                f"and {self.small_crops} small"
            )


def prototype_count(settings: SwavSettings, num_images: int) -> int:
    """``K = min(prototypes, N // IMAGES_PER_PROTOTYPE)``, at least 2: a prototype per few images leaves the
    equipartitioned codes of a small data set nothing to agree on (measured on 256 phantoms: 3,000 prototypes
    learnt nothing where 30 did)."""
    return max(2, min(settings.prototypes, num_images // IMAGES_PER_PROTOTYPE))


def small_crop_size(settings: SwavSettings, image_size: int) -> int:
    """Side of the small crops: ``round(image_size * small_fraction)``, at least 8 pixels."""
    return max(SMALLEST_CROP, round(image_size * settings.small_fraction))


def prototype_scores(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``z C^T`` ``[N, K]`` in float32, also under autocast: Sinkhorn's ``exp(s / epsilon)`` magnifies rounding."""
    with torch.autocast(embeddings.device.type, enabled=False):
        return embeddings.float() @ prototypes.float().t()


class Swav(PretextTask):
    name = "swav"

    def __init__(self, backbone: Backbone, settings: SwavSettings, context: TaskContext) -> None:
        super().__init__(backbone, settings, context)
        hidden = settings.hidden_dim
        self.head = nn.Sequential(OrderedDict(
            fc1=nn.Linear(backbone.feature_dim, hidden), bn=nn.BatchNorm1d(hidden), relu=nn.ReLU(),
            fc2=nn.Linear(hidden, settings.feature_dim),
        ))  # fmt: skip
        self.prototypes = nn.Linear(settings.feature_dim, prototype_count(settings, context.num_images), bias=False)
        self.register_buffer("queue", torch.zeros(settings.large_crops, settings.queue_length, settings.feature_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crops(
        self, images: torch.Tensor, size: int, scale: tuple[float, float], count: int, generator: torch.Generator
    ) -> torch.Tensor:
        """``count`` augmented crops of every image at ``size`` pixels, ``[count * B, C, size, size]`` crop by crop."""
        s = self.settings
        views = []
        for _ in range(count):
            x = resized_crops(images, size, scale, generator, flip=True)
            x = intensity_jitter(x, s.jitter_p, s.jitter_amount, generator)
            views.append(gaussian_blur(x, s.blur_p, generator))
        return torch.cat(views)

    def embeddings(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Normalised embeddings of the large crops, then of the small ones, ``[(large + small) * B, feature_dim]``."""
        s = self.settings
        size = self.context.image_size
        features = [self.backbone(self.crops(images, size, s.large_scale, s.large_crops, generator))]
        if s.small_crops:
            small = self.crops(images, small_crop_size(s, size), s.small_scale, s.small_crops, generator)
            features.append(self.backbone(small))
        return F.normalize(self.head(torch.cat(features)).float(), dim=1)

    def queue_capacity(self) -> int:
        """Rows of the queue this rank uses: its share of ``min(queue_length, N)`` over the processes.

        The cap at the data set's ``N`` images keeps a queue on a small data set
        from holding the same images twice, from epochs ago (MoCo caps its queue alike).
        """
        return min(self.settings.queue_length, self.context.num_images) // idist.get_world_size()

    @torch.no_grad()
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """Every rank's queue rows side by side in the saved ``queue`` (module docstring); a collective."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        world, capacity = idist.get_world_size(), self.queue_capacity()
        if world > 1:
            rows = idist.all_gather(self.queue[:, :capacity].contiguous())  # [world * L, c, D]
            large, dim = self.queue.shape[0], self.queue.shape[2]
            side_by_side = rows.view(world, large, capacity, dim).transpose(0, 1).reshape(large, -1, dim)
            saved = torch.zeros_like(self.queue)
            saved[:, : world * capacity] = side_by_side
            destination[prefix + "queue"] = saved

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        """This rank's rows of a saved ``queue`` (module docstring)."""
        key, world = prefix + "queue", idist.get_world_size()
        if world > 1 and key in state_dict:
            capacity = self.queue_capacity()
            start = idist.get_rank() * capacity
            mine = torch.zeros_like(state_dict[key])
            mine[:, :capacity] = state_dict[key][:, start : start + capacity]
            state_dict[key] = mine
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def assignments(
        self, scores: Sequence[torch.Tensor], embeddings: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], bool]:
        """The codes of the large crops' ``scores`` (queue before the batch once full), then the batch enqueued.

        Returns the codes and whether the queue took part.
        """
        s = self.settings
        capacity = self.queue_capacity()
        filling = capacity > 0 and self.epoch >= s.queue_start_epoch
        in_use = filling and int(self.queue_filled) >= capacity
        codes = []
        for i, (rows, batch) in enumerate(zip(scores, embeddings, strict=True)):
            queue = self.queue[i, :capacity]
            if in_use:
                rows = torch.cat([prototype_scores(queue, self.prototypes.weight), rows])
            codes.append(sinkhorn(rows, s.epsilon, s.sinkhorn_iterations, sum_over_ranks)[-batch.shape[0] :])
            if filling:
                queue.copy_(torch.cat([batch, queue])[:capacity])
        if filling:
            self.queue_filled.fill_(min(capacity, int(self.queue_filled) + embeddings[0].shape[0]))
        return codes, in_use

    def loss(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.settings
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = self.embeddings(images, generator)
        prototypes = self.prototypes.weight
        if self.epoch < s.freeze_prototypes_epochs:
            prototypes = prototypes.detach()
        b, large = images.shape[0], s.large_crops
        scores = prototype_scores(z, prototypes).split(b)
        codes, in_use = self.assignments([x.detach() for x in scores[:large]], z.detach().split(b)[:large])
        loss = swav_loss(scores, codes, s.temperature)
        return loss, {"loss": float(loss.detach()), "queue": float(in_use)}
