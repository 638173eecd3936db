"""The images of an adaptation run: labelled source, unlabelled target, and the held-out target evaluation set.

* **source** (labelled): the ``train`` split of ``--source``; a synthetic
  store is read through its block loader (a store from ``synth.generate``
  holds equally many images per class), any other data set through a
  class-balanced sampler (:class:`plumbing.sampling.BalancedBatchSampler`);
* **source validation** (label-free model selection): the store's ``val``
  split, or a seeded 10% of the source training split, patient-wise where
  the reader knows patients (:func:`evaluate.protocol.task_data.task_data`);
* **target** (adaptation, labels never read): the ``train`` split of ``--target``;
  a seeded slice of it (:data:`SELECTION_IMAGES`) also gives the label-free
  selection score (:mod:`adapt.selection`);
* **target evaluation** (reported, never used for a choice): the target's
  held-out split - the ``test`` seed stream of phantoms, CheXpert's official
  ``valid`` split, ChestX-ray14's test list (patients disjoint from ``train``
  in both), a store's ``val`` split (:attr:`datasets.spec.DataSetSpec.eval_split`).
  A target without labels (a ``folder`` without ``labels.csv``) has none:
  the run adapts to it and records the label-free figures only.

``--target-prior`` other than ``natural`` (:func:`adapt.label_shift.parse_target_prior`)
resamples a *labelled* target: the adaptation images (before the selection
slice is cut) and the evaluation images each become their largest subset
whose class counts follow the prior (:func:`adapt.label_shift.resample_to_prior`,
drawn with ``numpy_rng(seed, "target prior", "adaptation" | "evaluation")``),
read from the readers' labels without loading images. A target without
labels, or without an image of a class the prior asks for, is one
:class:`UserError` line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from datasets.batches import sampled_batches, training_batches
from datasets.registry import get_spec
from datasets.synthetic import SyntheticDataset
from datasets.tabular import NoLabelsError
from evaluate.protocol.task_data import DataChoice, evaluation_set, labels_of, task_classes, training_sets
from plumbing.distributed import rank, world_size
from plumbing.errors import DataRoleError, UserError
from plumbing.sampling import BalancedBatchSampler, ResumableBatchSampler
from plumbing.seeding import numpy_rng

from .config import AdaptConfig
from .label_shift import parse_target_prior, resample_to_prior

SELECTION_IMAGES = 1000
"""Unlabelled target training images whose predictions give the label-free selection score."""


@dataclass
class AdaptData:
    classes: tuple[str, ...]
    channels: int
    source: Dataset
    source_validation: Dataset
    target: Dataset
    target_evaluation: Dataset | None
    """The labelled held-out target images; ``None`` for a target without labels."""
    target_selection: Dataset
    target_prior: np.ndarray | None = None
    """The class prior ``--target-prior`` resampled the target to (``None``: ``natural``, not resampled)."""

    @property
    def source_batch_prior(self) -> torch.Tensor:
        """The class prior of the source training batches: uniform over the classes the source images hold (the
        batches are class-balanced, module docstring), float64 ``[C]``."""
        present = torch.bincount(labels_of(self.source), minlength=len(self.classes))[: len(self.classes)] > 0
        return present.double() / present.sum()

    @property
    def target_labelled(self) -> bool:
        """Whether the target has labelled evaluation images (else the run reports label-free figures only)."""
        return self.target_evaluation is not None

    def sizes(self) -> dict[str, int]:
        return {"source": len(self.source), "source_validation": len(self.source_validation),
                "target": len(self.target), "target_evaluation": len(self.target_evaluation or ()),
                "target_selection": len(self.target_selection)}


def known_labels(images: Dataset | None) -> torch.Tensor | None:
    """The class of every image of ``images`` (:func:`evaluate.protocol.task_data.labels_of`), or ``None`` when
    there is no set, the set is empty, its reader has no labels or an image has none (``-1``)."""
    if images is None:
        return None
    try:
        labels = labels_of(images)
    except TypeError:  # a reader without labels
        return None
    return labels if len(labels) and bool((labels >= 0).all()) else None


def choices(cfg: AdaptConfig) -> tuple[DataChoice, DataChoice, DataChoice]:
    """The source, target (adaptation) and target evaluation images of ``cfg``."""
    def task_of(name: str) -> tuple[int | None, str | None]:
        return (cfg.version, cfg.setting) if get_spec(name).schema is not None else (None, None)

    source_spec, target_spec = get_spec(cfg.source), get_spec(cfg.target)
    source = DataChoice(cfg.source, cfg.source_root, *task_of(cfg.source),
                        source_spec.image_count(cfg.source_length))
    target = DataChoice(cfg.target, cfg.target_root, *task_of(cfg.target),
                        target_spec.image_count(cfg.target_length))
    evaluation = DataChoice(cfg.target, cfg.target_root, *task_of(cfg.target),
                            target_spec.image_count(cfg.eval_length, held_out=True))
    return source, target, evaluation


def adapt_data(cfg: AdaptConfig) -> AdaptData:
    """Every image set of ``cfg`` (module docstring); one :class:`UserError` line for missing data or a mismatch."""
    source, target, evaluation = choices(cfg)
    for role, choice in (("source", source), ("target", target)):
        try:
            get_spec(choice.name).resolve_root(choice.root)
        except DataRoleError as exc:
            raise exc.in_role(role) from None
    source_classes, target_classes = task_classes(source), task_classes(target)
    if source_classes != target_classes:
        raise UserError(f"--target {target.name} has the classes {', '.join(target_classes)}, not those of "
                        f"--source {source.name} ({', '.join(source_classes)})")
    if get_spec(target.name).channels != get_spec(source.name).channels:
        raise UserError(f"--target {target.name} and --source {source.name} differ in image channels")
    fit, validation = training_sets(source, cfg.image_size, cfg.seed)
    adaptation = target.build("train", cfg.image_size, False)
    try:
        held_out = evaluation_set(evaluation, cfg.image_size)
    except NoLabelsError:  # an unlabelled target: adapted to, never scored
        held_out = None
    prior = parse_target_prior(cfg.target_prior, len(source_classes), cfg.seed)
    if prior is not None:
        adaptation, held_out = (_resampled(images, prior, source_classes, cfg, role)
                                for role, images in (("adaptation", adaptation), ("evaluation", held_out)))
    small = [name for name, images in (("source validation", validation), ("target evaluation", held_out))
             if images is not None and len(images) < world_size()]
    if small:
        raise UserError(f"the {' and '.join(small)} set has fewer images than the {world_size()} processes; pass a "
                        "larger --source-length or --eval-length")
    if len(adaptation) < world_size():
        raise UserError(f"--target {target.name} has {len(adaptation)} training images; more are needed")
    for role, images in (("source", fit), ("target", adaptation)):
        if len(images) < cfg.batch_size:  # a step would repeat a few images to fill its batch
            raise UserError(f"--{role} {source.name if role == 'source' else target.name} gives {len(images)} "
                            f"{role} training images, fewer than one batch (--batch-size {cfg.batch_size}); pass a "
                            f"larger --{role}-length or a smaller --batch-size")
    slice_rows = numpy_rng(cfg.seed, "selection").permutation(len(adaptation))[:SELECTION_IMAGES]
    selection = Subset(adaptation, sorted(slice_rows.tolist()))
    return AdaptData(source_classes, get_spec(source.name).channels, fit, validation, adaptation, held_out,
                     selection, prior)


def _resampled(
    images: Dataset | None, prior: np.ndarray, classes: tuple[str, ...], cfg: AdaptConfig, role: str
) -> Subset:
    """The largest subset of the labelled target ``images`` (``role``: adaptation or evaluation) that follows
    ``prior`` (module docstring); one :class:`UserError` line for unlabelled images or a class the prior needs."""
    labels = known_labels(images)
    asked = f"--target-prior {cfg.target_prior}"
    if labels is None:
        raise UserError(f"{asked} resamples a labelled target, and the {role} images of --target {cfg.target} have "
                        "no labels; use --target-prior natural")
    labels = labels.numpy()
    lacking = [name for c, name in enumerate(classes) if prior[c] > 0 and not (labels == c).any()]
    if lacking:
        length = "--target-length" if role == "adaptation" else "--eval-length"
        raise UserError(f"{asked}: the {role} images of --target {cfg.target} hold no image of {', '.join(lacking)}; "
                        f"pass a larger {length} or a prior without it")
    return Subset(images, resample_to_prior(labels, prior, numpy_rng(cfg.seed, "target prior", role)).tolist())


def source_batches(
    data: AdaptData, batch_size: int, seed: int, start: int, workers: int, device: torch.device
) -> Iterable[dict[str, Any]]:
    """Endless class-balanced source batches from iteration ``start`` (this rank's share of ``batch_size``)."""
    if isinstance(data.source, SyntheticDataset):
        return training_batches(data.source, batch_size, seed, start, workers, device)
    sampler = BalancedBatchSampler(labels_of(data.source), batch_size, seed, start=start, rank=rank(),
                                   world_size=world_size())
    return sampled_batches(data.source, sampler, workers, device)


def target_batches(
    data: AdaptData, batch_size: int, seed: int, start: int, workers: int, device: torch.device
) -> Iterable[dict[str, Any]]:
    """Endless shuffled target batches from iteration ``start`` (labels are never read)."""
    sampler = ResumableBatchSampler(len(data.target), batch_size, seed + 1, start=start, rank=rank(),
                                    world_size=world_size())
    return sampled_batches(data.target, sampler, workers, device)


