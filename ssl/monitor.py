"""The online monitor of a pretext step: the k-NN balanced accuracy of its backbone on labelled images.

A pretext loss says little about what a backbone learnt (MoCo's loss can
rise while its features improve, ODC's can sit at ``ln(clusters)`` while
nothing is learnt), so solo-learn and lightly watch a k-NN probe while they
pre-train. Here, with a labelled data set at hand (``--monitor``, by
default the downstream task's), :class:`Monitor` scores the backbone with
the weighted k-NN of :mod:`evaluate.protocol.probes`. Its bank and queries
are two disjoint class-balanced draws from the labelled training images
(:func:`balanced_halves`: of every class up to ``images / C``, at most half
of the class, for each), the same images for every step and seed (drawn
with seed 0). Balanced queries make the balanced accuracy a steady signal:
phantoms' 200 validation images hold 5 of Pneumonia, so that one query moved
it by 0.05 between epochs. A step scores its start before it
trains and its backbone after every epoch (:func:`ssl.trainer.fit_step`):
the values go to ``step.json`` (``knn_start``, ``epoch_knn``), a line per
epoch, the progress bar and TensorBoard (``train/monitor_knn``), and the
learning-rate trials keep the rate whose backbone scores highest instead of
the one with the lowest loss. Cost: one forward pass over at most
``2 x images`` images per epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from evaluate.protocol.probes import collect_features, knn_probe
from evaluate.protocol.task_data import DataChoice, labels_of, task_classes, training_sets
from plumbing.errors import UserError
from plumbing.runtime import Runtime
from plumbing.seeding import numpy_rng

MONITOR_IMAGES = 500
"""Bank and query images of the monitor (each at most)."""
MONITOR_SEED = 0
"""The seed of the monitor's draws: the same images for every step and run."""
MONITOR_DRAW = "class-balanced halves of the training images"
"""How the bank and queries are drawn (:func:`balanced_halves`); part of the record, so steps watched by an
earlier draw (bank of training, queries of validation images) are not taken for steps of this one."""


def balanced_halves(labels: torch.Tensor, num_classes: int, images: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint rows ``(bank, queries)`` in row order: with ``m = max(1, images // C)``, of every class ``c`` with
    ``n_c`` rows a seeded ``min(m, n_c // 2)`` for the queries and ``min(m, n_c - that)`` of the rest for the bank."""
    rng, per_class = numpy_rng(seed, "monitor rows"), max(1, images // num_classes)
    bank, queries, classes = [], [], labels.numpy()
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(classes == c))
        asked = min(per_class, len(rows) // 2)
        queries.append(rows[:asked])
        bank.append(rows[asked: asked + per_class])
    return sorted(np.concatenate(bank).tolist()), sorted(np.concatenate(queries).tolist())


@dataclass(frozen=True)
class MonitorConfig:
    """Which labelled images the monitor reads (part of a step's configuration: it chooses the learning rate)."""

    data: str
    root: str | None
    version: int | None
    setting: str | None
    images: int = MONITOR_IMAGES
    draw: str = MONITOR_DRAW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        task = "" if self.version is None else f" v{self.version}-{self.setting}"
        return f"{self.data}{task} ({self.images} + {self.images} images at most)"


class Monitor:
    """The monitor's bank and queries at one image size (module docstring); :meth:`knn` scores a backbone."""

    def __init__(self, cfg: MonitorConfig, image_size: int) -> None:
        choice = DataChoice(cfg.data, cfg.root, cfg.version, cfg.setting, None)
        train, _ = training_sets(choice, image_size, MONITOR_SEED)
        self.cfg = cfg
        self.classes = task_classes(choice)
        bank, queries = balanced_halves(labels_of(train), len(self.classes), cfg.images, MONITOR_SEED)
        if not queries:
            raise UserError(f"monitor {cfg.describe()}: no class has two training images, so there is nothing to "
                            "query; pass another --monitor or --monitor none")
        self.bank, self.queries = Subset(train, bank), Subset(train, queries)
        self._starts: dict[str, float] = {}

    def start_knn(self, key: str, backbone: nn.Module, runtime: Runtime, batch_size: int) -> float:
        """:meth:`knn` of the start of the step ``key`` (a step's key covers its start and seed), scored once:
        the learning-rate trials and the full step of one step all start from the same weights."""
        if key not in self._starts:
            self._starts[key] = self.knn(backbone, runtime, batch_size)
        return self._starts[key]

    def knn(self, backbone: nn.Module, runtime: Runtime, batch_size: int) -> float:
        """The weighted k-NN balanced accuracy of ``backbone`` on the queries against the bank (every rank
        takes part and gets the same value); the backbone is left in eval mode."""
        kwargs = {"batch_size": batch_size, "workers": 0, "device": runtime.device, "amp": runtime.bf16}
        bank = collect_features(backbone, self.bank, **kwargs)
        queries = collect_features(backbone, self.queries, **kwargs)
        return float(knn_probe(bank, queries, self.classes)["balanced_accuracy"])
