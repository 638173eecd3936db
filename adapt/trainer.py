"""One adaptation run: the DCAN step, evaluation every ``eval_every`` steps, checkpoints and results.

:class:`DcanTrainer` holds the network (:mod:`adapt.model`), SGD with the
official learning-rate multipliers and schedule ``lr * (1 + gamma * p) **
-power`` (``p`` the progress in [0, 1]), and :meth:`DcanTrainer.step`: one
step on a source batch and a target batch, concatenated as ``[source;
target]`` so the attention modules route each half through its own branch,
with the loss of :mod:`adapt.losses`; the random draws of the correction
regulariser at step ``t`` (counted from 1) are seeded by ``(seed, t)``. Under several processes each rank
takes its share of both batches and gradients are averaged over ranks
(:func:`plumbing.distributed.average_gradients`; the MMD, entropy and
diversity terms are computed on each rank's share, the linear-time MMD
estimator's pairs lying within a rank).

:func:`train_adaptation` runs the steps with the shared skeleton
(:class:`plumbing.engine.StepRunner`: NaN guard, checkpoints at every
evaluation, progress bar, TensorBoard);
each evaluation scores the target evaluation set (metrics of
:mod:`evaluate.metrics`), the label-free score of :mod:`adapt.selection` on
a fixed slice of the unlabelled target training images, and the source
validation set through the source network (source attention branches,
uncorrected head: what the cross-entropy trains), and appends them to the
checkpointed history. Under several processes with trained batch norm each
rank normalises with its own share of the batch (as DDP without synchronised
batch norm) and the running statistics are averaged over ranks before every
evaluation and checkpoint.

Label shift: every evaluation also estimates the target prior both ways
(:func:`adapt.label_shift.estimate_priors`: BBSE and EM) from the evaluation
network's outputs on the source validation set and the target selection
slice, and records them (``prior_estimates``). With ``--prior-correction
bbse|em`` the step weighs each source image of class ``y`` by ``w_y = q(y) /
p_s(y)`` in both MMD terms and the diversity term becomes ``D_q``
(:mod:`adapt.losses`), ``q`` the latest trusted estimate of that estimator
floored at :data:`~adapt.label_shift.PRIOR_FLOOR` and ``p_s`` the source
batches' prior. An estimate is trusted when the evaluation network's
class-conditional confusion matrix on the source validation set has its
smallest singular value at least :data:`~adapt.label_shift.RELIABLE_CONDITIONING`
(:func:`~adapt.label_shift.confusion_conditioning`, recorded as
``prior_conditioning``); until then ``q = p_s`` (every weight 1): an
untrained classifier's estimates say nothing, and training towards them
drove short runs to collapse. ``q`` is part of the checkpointed :class:`RunState`, so
a resumed run is exact; the outputs are gathered over ranks, so every rank
computes the same ``q``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datasets.batches import checkpoint_position, evaluation_batches
from evaluate.metrics import metrics_report
from evaluate.protocol.training import predict, score
from models.backbones import Classifier
from plumbing.distributed import average_gradients, mean_values_over_ranks, print_on_main
from plumbing.engine import StepRunner
from plumbing.precision import bf16_autocast, memory_layout
from plumbing.runtime import Runtime
from plumbing.seeding import generator
from plumbing.training import Progress, restore

from .config import AdaptConfig
from .data import AdaptData, source_batches, target_batches
from .label_shift import PRIOR_FLOOR, RELIABLE_CONDITIONING, class_weights, estimate_priors, floored_prior
from .losses import (
    alignment_mmd,
    correction_regulariser,
    prediction_diversity,
    prior_diversity,
    source_cross_entropy,
    target_entropy,
    total_loss,
)
from .model import SourceNetwork, average_batchnorm_statistics, build_model, parameter_groups, source_rows, train_mode
from .outputs import collect_outputs
from .selection import COLLAPSE_SHARE, collapsed_class, prediction_spread
from .validators import validator_scores


@dataclass
class RunState(Progress):
    """The checkpointed progress: the run's record, its step, every evaluation so far and the target prior a prior
    correction trains towards (empty until the first evaluation: the source batch prior)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    prior: list[float] = field(default_factory=list)


class DcanTrainer:
    """The network, its optimiser and schedule, and one adaptation step.

    ``source_prior`` is the class prior of the source batches (default
    uniform: class-balanced batches, :attr:`adapt.data.AdaptData.source_batch_prior`).
    """

    def __init__(self, model: Classifier, cfg: AdaptConfig, device: torch.device, amp: bool,
                 source_prior: torch.Tensor | None = None) -> None:
        self.cfg, self.device, self.amp = cfg, device, amp
        self.layout = memory_layout(device)
        self.model = model.to(device, memory_format=self.layout)
        self.optimizer = torch.optim.SGD(parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (1.0 + cfg.lr_gamma * min(step, cfg.steps) / cfg.steps) ** -cfg.lr_power
        )
        self.state = RunState()
        self.num_classes = model.head.out_features
        uniform = torch.full((self.num_classes,), 1 / self.num_classes, dtype=torch.float64)
        self.source_prior = uniform if source_prior is None else source_prior.double()

    @property
    def prior(self) -> torch.Tensor:
        """The target prior ``q`` the correction trains towards (module docstring), float64 ``[C]``."""
        return torch.tensor(self.state.prior, dtype=torch.float64) if self.state.prior else self.source_prior

    def correct_towards(self, estimates: dict[str, Any], conditioning: float) -> None:
        """With a prior correction, train from the next step on towards its estimator's estimate in ``estimates``
        (an evaluation's ``prior_estimates``), floored (:func:`adapt.label_shift.floored_prior`), when
        ``conditioning`` (its ``prior_conditioning``) is at least :data:`~adapt.label_shift.RELIABLE_CONDITIONING`;
        else keep the previous ``q``."""
        if self.cfg.prior_correction != "none" and conditioning >= RELIABLE_CONDITIONING:
            self.state.prior = floored_prior(torch.tensor(estimates[self.cfg.prior_correction]), PRIOR_FLOOR).tolist()

    def objects(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "schedule": self.schedule, "run": self.state}

    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["image"].to(self.device, non_blocking=True)

    def terms(
        self, source: dict[str, Any], target: dict[str, Any] | None, step: int
    ) -> dict[str, torch.Tensor]:
        """Every loss term the configuration weighs, on one source and one target batch (module docstring)."""
        cfg, weights = self.cfg, self.cfg.weights()
        xs, ys = self._images(source), torch.as_tensor(source["label"]).to(self.device, non_blocking=True)
        x = xs if target is None else torch.cat([xs, self._images(target)])
        x = x.contiguous(memory_format=self.layout)
        with bf16_autocast(self.device, self.amp), source_rows(self.model, len(xs) if cfg.domain_attention else 0):
            features = self.model.backbone(x).float()
        fs = features[: len(xs)]
        zs = self.model.head(fs)
        terms = {"cross_entropy": source_cross_entropy(zs, ys)}
        if weights["regulariser"]:  # source images alone
            fs_hat, gs_hat = self.model.corrected(fs)
            terms["regulariser"] = correction_regulariser(
                fs, fs_hat, zs, gs_hat, ys, self.num_classes, generator(cfg.seed, "regulariser", step)
            )
        if target is None:
            return terms
        ft_hat, gt_hat = self.model.corrected(features[len(xs):])
        corrected = cfg.prior_correction != "none"
        if weights["feature_mmd"] or weights["output_mmd"]:
            source_weights = None
            if corrected:  # w_y of every source image
                source_weights = class_weights(self.prior, self.source_prior).float().to(self.device)[ys]
            terms["feature_mmd"], terms["output_mmd"] = alignment_mmd(fs, ft_hat, zs, gt_hat, source_weights)
        if weights["entropy"]:
            terms["entropy"] = target_entropy(gt_hat)
        if weights["diversity"]:
            terms["diversity"] = prior_diversity(gt_hat, self.prior) if corrected else prediction_diversity(gt_hat)
        return terms

    def step(self, batch: tuple[dict[str, Any], dict[str, Any] | None]) -> dict[str, float]:
        """One SGD step on a ``(source, target)`` pair of batches (``target`` ``None`` without alignment), step
        ``state.iteration + 1``; returns the loss, every term and the backbone's learning rate (averaged over ranks)."""
        source, target = batch
        train_mode(self.model, self.cfg.frozen_batchnorm)
        terms = self.terms(source, target, self.state.iteration + 1)
        loss = total_loss(terms, self.cfg.weights(), self.cfg.alpha)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.model.parameters())
        self.optimizer.step()
        self.schedule.step()
        out = {"loss": float(loss.detach())} | {k: float(v.detach()) for k, v in terms.items()}
        return mean_values_over_ranks(out | {"lr": self.schedule.get_last_lr()[0]})

    @torch.no_grad()
    def evaluate(self, data: AdaptData, batch_size: int, workers: int, step: int) -> dict[str, Any]:
        """Target metrics, the label-free scores, the prior estimates and the collapse flag at ``step`` (one
        history entry).

        Trained batch-norm statistics are first averaged over ranks, so every
        rank scores (and checkpoints) the same network. A target without
        labels gets no metrics; its collapse flag comes from the evaluation
        network's predictions on the target selection slice. The label-free validators of
        :mod:`adapt.validators` score the evaluation network's outputs on the
        source validation images and the target selection slice.
        """
        if not self.cfg.frozen_batchnorm:
            average_batchnorm_statistics(self.model)
        self.model.eval()
        kwargs = {"batch_size": batch_size, "workers": workers, "device": self.device, "amp": self.amp}
        selection = collect_outputs(self.model, data.target_selection, **kwargs)
        validation = collect_outputs(self.model, data.source_validation, **kwargs)
        if data.target_labelled:
            batches = evaluation_batches(data.target_evaluation, batch_size, workers, self.device)
            engine = predict(self.model, batches, self.device, self.amp, self.num_classes)
            target = metrics_report(engine.state.metrics, data.classes)
        else:  # the predictions of the unlabelled selection slice
            counts = torch.bincount(selection.logits.argmax(dim=1), minlength=self.num_classes).tolist()
            target = {"predicted_histogram": dict(zip(data.classes, counts, strict=True)), "n": len(selection.logits)}
        spread = prediction_spread(selection.probabilities)
        estimates = estimate_priors(validation.logits, validation.labels, selection.logits, self.source_prior)
        source = score(SourceNetwork(self.model, self.cfg.domain_attention), data.source_validation, data.classes,
                       batch_size=batch_size, workers=0, device=self.device, amp=self.amp)
        return target | {
            "step": step,
            "source_validation_balanced_accuracy": source["balanced_accuracy"],
            "information_maximisation": spread["score"],
            "prediction_entropy": spread["entropy"],
            "prediction_diversity": spread["diversity"],
            **validator_scores(validation, selection, self.cfg.seed),
            "collapsed": collapsed_class(target["predicted_histogram"]),
            "prior_estimates": {k: estimates[k] for k in ("bbse", "em")},
            "calibration_temperature": estimates["temperature"],
            "prior_conditioning": estimates["conditioning"],
        }


def _paired(source: Iterable[dict[str, Any]], target: Iterable[dict[str, Any]] | None) -> Iterator[tuple]:
    return zip(source, target if target is not None else itertools.repeat(None), strict=False)


def train_adaptation(cfg: AdaptConfig, data: AdaptData, runtime: Runtime, run_dir: Path, record: dict[str, Any],
                     checkpoint: dict[str, Any] | None) -> DcanTrainer:
    """Train (or resume) the run in ``run_dir`` to ``cfg.steps``, evaluating every ``cfg.eval_every`` steps."""
    model, provenance = build_model(cfg, data.channels, len(data.classes), runtime.runs_dir)
    trainer = DcanTrainer(model, cfg, runtime.device, runtime.bf16, data.source_batch_prior)
    if checkpoint is not None:
        restore(trainer.objects(), checkpoint)
        provenance = trainer.state.config["init_provenance"]
    start = trainer.state.iteration
    trainer.state.config = dict(record) | {"init_provenance": provenance}
    sources = source_batches(data, cfg.batch_size, cfg.seed, start, runtime.workers, runtime.device)
    targets = None
    if cfg.uses_target:
        targets = target_batches(data, cfg.batch_size, cfg.seed, start, runtime.workers, runtime.device)
    to_save = trainer.objects()
    checkpoint_position(sources, to_save, checkpoint)
    if start >= cfg.steps:
        return trainer

    def evaluate(iteration: int) -> None:  # registered before the checkpoint of the same iteration
        entry = trainer.evaluate(data, cfg.batch_size, runtime.workers, iteration)
        trainer.state.history.append(entry)
        trainer.correct_towards(entry["prior_estimates"], entry["prior_conditioning"])
        note = (f"; warning: {entry['collapsed']} takes over {100 * COLLAPSE_SHARE:.0f}% of the target "
                "predictions (collapse)" if entry["collapsed"] else "")
        target = ("no target labels" if "balanced_accuracy" not in entry
                  else f"target balanced accuracy {entry['balanced_accuracy']:.4f}")
        print_on_main(f"step {entry['step']}: {target}, source validation "
                      f"{entry['source_validation_balanced_accuracy']:.4f}{note}")

    runner = StepRunner(trainer.step, trainer.state, total=cfg.steps, epoch_length=cfg.steps)
    runner.every(cfg.eval_every, evaluate, at_end=True)
    runner.train(_paired(sources, targets), run_dir=run_dir, to_save=to_save, checkpoint_every=cfg.eval_every,
                 progress=runtime.progress)
    return trainer
