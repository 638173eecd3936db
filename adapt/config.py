"""What defines one adaptation run (:class:`AdaptConfig`) and the three alignment presets.

Presets (``--alignment``):

* ``none`` - source only ("No Alignment"): cross-entropy on source images;
  one attention branch shared by both domains, no correction blocks, no
  target images in training;
* ``dcan`` - every term of the official DCAN objective with its weights
  (:mod:`adapt.losses`): domain-conditioned attention, correction blocks,
  feature and output MMD, the correction regulariser and target entropy;
* ``ours`` - ``dcan`` without the correction regulariser ("Our Alignment").

``--diversity W`` adds the entropy of the mean target prediction to any
preset; its cells are labelled ``<preset>+div<W>`` (and a weight given
against a preset's, ``<preset>+<term><W>``). The optimiser, learning
rate multipliers, schedule and batch composition default to the official
ones (SGD, lr 1e-4, momentum 0.9, Nesterov, weight decay 1e-3;
multipliers backbone 1, classifier 10, correction blocks 0.01;
``lr * (1 + gamma * p) ** -0.75``; 36 source + 36 target images a step).

``--prior-correction bbse|em`` (:data:`PRIOR_CORRECTIONS`, off by default)
corrects the alignment for label shift with the target prior estimated by
that estimator (:mod:`adapt.label_shift`): class-weighted MMD terms and the
diversity term towards the estimate; its cells are labelled
``<preset>+<estimator>`` (``ours+em``). It changes only the MMD and
diversity terms, so a cell with neither is refused
(:func:`check_prior_correction`). ``--target-prior`` (default ``natural``)
resamples a labelled target to a class prior (:mod:`adapt.data`); it names
the data, as ``--target-length`` does, not the method, so it is not in the
label (a grid under another target prior takes another ``--name``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from plumbing.errors import UserError
from plumbing.lookup import look_up

ALIGNMENTS = ("none", "dcan", "ours")
PRIOR_CORRECTIONS = ("none", "bbse", "em")
BN_MODES = ("auto", "frozen", "train")
PRESET_WEIGHTS: dict[str, dict[str, float]] = {
    "none": {"feature_mmd": 0.0, "output_mmd": 0.0, "regulariser": 0.0, "entropy": 0.0},
    "dcan": {"feature_mmd": 1.0, "output_mmd": 1.0, "regulariser": 1.0, "entropy": 0.1},
    "ours": {"feature_mmd": 1.0, "output_mmd": 1.0, "regulariser": 0.0, "entropy": 0.1},
}


@dataclass(frozen=True)
class AdaptConfig:
    """One cell of an adaptation grid (recorded in ``config.json`` and every checkpoint)."""

    source: str = "synthetic"
    source_root: str | None = None
    target: str = "chexpert"
    target_root: str | None = None
    version: int | None = 3
    setting: str | None = "0s"
    source_length: int | None = None
    target_length: int | None = None
    eval_length: int | None = None
    alignment: str = "dcan"
    feature_mmd: float = 1.0
    output_mmd: float = 1.0
    regulariser: float = 1.0
    entropy: float = 0.1
    diversity: float = 0.0
    alpha: float = 1.5
    prior_correction: str = "none"
    target_prior: str = "natural"
    backbone: str = "resnet50"
    init: str = "imagenet"
    batchnorm: str = "auto"
    image_size: int = 224
    steps: int = 20000
    batch_size: int = 36
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_gamma: float = 1.0
    lr_power: float = 0.75
    classifier_lr_mult: float = 10.0
    correction_lr_mult: float = 0.01
    eval_every: int = 500
    seed: int = 0

    @property
    def domain_attention(self) -> bool:
        """Separate source and target attention branches (every preset but ``none``)."""
        return self.alignment != "none"

    @property
    def correction(self) -> bool:
        """Feature- and output-level correction blocks (every preset but ``none``)."""
        return self.alignment != "none"

    @property
    def uses_target(self) -> bool:
        """Whether a training step reads target images (a term needs them)."""
        return any(self.weights()[k] for k in ("feature_mmd", "output_mmd", "entropy", "diversity"))

    @property
    def frozen_batchnorm(self) -> bool:
        """Batch norm frozen (official) unless ``train``, or ``auto`` with a backbone trained from scratch."""
        return self.batchnorm == "frozen" or (self.batchnorm == "auto" and self.init != "scratch")

    @property
    def label(self) -> str:
        """The cell's name in grids and reports: the preset, then ``+<estimator>`` with a prior correction
        (``ours+em``), ``+div<W>`` when diversity is on and ``+<term><W>`` for every weight that differs from the
        preset's (``+alpha<A>`` for another ``alpha``)."""
        label = self.alignment + (f"+{self.prior_correction}" if self.prior_correction != "none" else "")
        label += f"+div{self.diversity:g}" if self.diversity else ""
        preset = PRESET_WEIGHTS.get(self.alignment, {})
        for key, value in preset.items():
            if getattr(self, key) != value:
                label += f"+{key}{getattr(self, key):g}"
        return label + (f"+alpha{self.alpha:g}" if self.alpha != AdaptConfig.alpha else "")

    def weights(self) -> dict[str, float]:
        """The weight of every loss term but the cross-entropy (the terms of :func:`adapt.losses.total_loss`)."""
        return {"feature_mmd": self.feature_mmd, "output_mmd": self.output_mmd, "regulariser": self.regulariser,
                "entropy": self.entropy, "diversity": self.diversity}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_prior_correction(cfg: AdaptConfig) -> AdaptConfig:
    """``cfg`` if its prior correction is known and changes a term it weighs; one :class:`UserError` line if not.

    A correction weighs the MMD terms and the diversity term; with all three
    off (the ``none`` preset without ``--diversity``) its cell would train
    exactly as the uncorrected one, so it is refused rather than run twice.
    """
    look_up("prior correction", cfg.prior_correction, PRIOR_CORRECTIONS, option="--prior-correction")
    corrected = ("feature_mmd", "output_mmd", "diversity")
    if cfg.prior_correction != "none" and not any(cfg.weights()[k] for k in corrected):
        raise UserError(f"--prior-correction {cfg.prior_correction} weighs the MMD and diversity terms, which the "
                        f"{cfg.alignment} preset leaves off: add --diversity W, or run --alignment {cfg.alignment} "
                        "in its own command without a prior correction")
    return cfg


def with_preset(cfg: AdaptConfig, alignment: str) -> AdaptConfig:
    """``cfg`` with ``alignment``'s term weights (:data:`PRESET_WEIGHTS`); the diversity weight is kept."""
    look_up("alignment", alignment, ALIGNMENTS)
    return replace(cfg, alignment=alignment, **PRESET_WEIGHTS[alignment])
