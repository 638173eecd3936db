"""The DCAN network: a registered ResNet with domain-conditioned channel attention, a linear head and corrections.

:func:`build_model` starts from :class:`models.backbones.Classifier` with
channel attention in every residual block (basic and bottleneck) and, for
the ``dcan`` / ``ours`` presets, correction blocks. Each attention module
becomes a :class:`DomainChannelAttention`: a first FC per domain
(``fc1`` for the target, ``source_fc1`` a copy of it for the source), the
shared ``fc2`` and sigmoid. In a training step the batch is
``[source; target]`` and :func:`source_rows` tells every module how many
leading rows are source images; otherwise (evaluation, the ``none`` preset)
every image goes through the target branch.

Initialisation as the reference code: the classifier ``N(0, 0.01)``, bias 0;
the correction blocks ``N(0, 0.005)``, bias 0.1. The reference starts from a
pretrained SE-ResNet; pretrained weights without attention (ImageNet, an SSL
backbone) get attention modules that start as nearly the identity (second
FC zero, bias :data:`IDENTITY_BIAS`) so the pretrained blocks keep working. Batch norm frozen (eval
mode, affine parameters not trained) when the configuration says so.

At evaluation the network is exactly an :class:`~models.backbones.Classifier`
with attention and corrections, which :func:`export_classifier` writes as a
model file (the source branches dropped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.backbones import ChannelAttention, Classifier, build_backbone
from models.initialisation import initialise
from models.model_file import read_model_info, save_model
from plumbing.distributed import mean_over_ranks
from plumbing.seeding import derive_seed

from .config import AdaptConfig

IDENTITY_BIAS = 4.0
"""Bias of the attention's second FC (weights zero) on pretrained blocks: sigmoid(4) = 0.98, nearly the identity."""

SEED_FIELD = "{seed}"
"""In ``--init PATH``: the cell's seed."""

class DomainChannelAttention(ChannelAttention):
    """Channel attention with a first FC per domain: rows ``[:source_rows]`` use ``source_fc1``, the rest ``fc1``."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.source_fc1 = nn.Linear(channels, self.fc1.out_features)
        self.source_rows = 0

    @classmethod
    def from_attention(cls, attention: ChannelAttention) -> DomainChannelAttention:
        """The domain-conditioned form of ``attention``: its FCs, and the source FC a copy of its first FC."""
        module = cls(attention.fc1.in_features)
        module.fc1.load_state_dict(attention.fc1.state_dict())
        module.fc2.load_state_dict(attention.fc2.state_dict())
        module.source_fc1.load_state_dict(attention.fc1.state_dict())
        return module.to(attention.fc1.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3))
        n = self.source_rows
        if n == 0:
            weights = self.weights(squeezed, self.fc1)
        else:
            weights = torch.cat([self.weights(squeezed[:n], self.source_fc1), self.weights(squeezed[n:], self.fc1)])
        return x * weights[:, :, None, None].to(x.dtype)


def domain_modules(model: nn.Module) -> list[DomainChannelAttention]:
    return [m for m in model.modules() if isinstance(m, DomainChannelAttention)]


@contextlib.contextmanager
def source_rows(model: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, the first ``rows`` images of a batch go through the source attention branches."""
    modules = domain_modules(model)
    for m in modules:
        m.source_rows = rows
    try:
        yield
    finally:
        for m in modules:
            m.source_rows = 0


def _normal(layer: nn.Linear, std: float, bias: float) -> None:
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.constant_(layer.bias, bias)


def build_model(cfg: AdaptConfig, channels: int, num_classes: int, runs_dir: Path) -> tuple[Classifier, dict]:
    """The network of ``cfg`` initialised by ``cfg.init`` (seeded by ``cfg.seed``), and the init's provenance.

    ``{seed}`` in ``cfg.init`` stands for the cell's seed (a start per seed, as
    ``bench.adapt_phantom`` trains them): the file of that seed is loaded, and
    the provenance's ``init`` keeps the pattern, so that ``adapt.report``
    averages the seeds of one setting.
    """
    torch.manual_seed(derive_seed(cfg.seed, "adapt model"))
    backbone = build_backbone(cfg.backbone, channels, attention=True)
    provenance = initialise(backbone, cfg.init.replace(SEED_FIELD, str(cfg.seed)), runs_dir) | {"init": cfg.init}
    if cfg.init != "scratch" and not (cfg.init != "imagenet" and read_model_info(Path(provenance["file"])).attention):
        for module in backbone.modules():  # pretrained blocks without attention: start it as (nearly) the identity
            if isinstance(module, ChannelAttention):
                nn.init.zeros_(module.fc2.weight)
                nn.init.constant_(module.fc2.bias, IDENTITY_BIAS)
    model = Classifier(backbone, num_classes, correction=cfg.correction)
    _normal(model.head, 0.01, 0.0)
    if cfg.correction:
        for block in (model.feature_correction, model.output_correction):
            for layer in (block.fc1, block.fc2):
                _normal(layer, 0.005, 0.1)
    if cfg.domain_attention:
        for module in list(backbone.modules()):
            if isinstance(module, nn.Sequential) and isinstance(getattr(module, "attention", None), ChannelAttention):
                module.attention = DomainChannelAttention.from_attention(module.attention)
    if cfg.frozen_batchnorm:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)
    return model, provenance


def train_mode(model: Classifier, frozen_batchnorm: bool) -> None:
    """Training mode, with every batch norm in eval mode (running statistics kept) when frozen."""
    model.train()
    if frozen_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def parameter_groups(model: Classifier, cfg: AdaptConfig) -> list[dict[str, Any]]:
    """SGD groups with their learning-rate multipliers: backbone 1, classifier 10, correction blocks 0.01."""
    groups = [("backbone", model.backbone.parameters(), 1.0), ("head", model.head.parameters(), cfg.classifier_lr_mult)]
    if cfg.correction:
        corrections = [*model.feature_correction.parameters(), *model.output_correction.parameters()]
        groups.append(("correction", corrections, cfg.correction_lr_mult))
    return [
        {"name": name, "params": [p for p in params if p.requires_grad], "lr": cfg.lr * mult, "lr_mult": mult}
        for name, params, mult in groups
    ]


class SourceNetwork(nn.Module):
    """``head(backbone(x))`` through the source attention branches: the network the source cross-entropy trains."""

    def __init__(self, model: Classifier, domain_attention: bool) -> None:
        super().__init__()
        self.model, self.domain_attention = model, domain_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with source_rows(self.model, len(x) if self.domain_attention else 0):
            return self.model.head(self.model.backbone(x))


def average_batchnorm_statistics(model: nn.Module) -> None:
    """Replace every batch norm's running mean and variance by their mean over ranks (nothing in one process)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(mean_over_ranks(module.running_mean))
            module.running_var.copy_(mean_over_ranks(module.running_var))


def evaluation_state(model: Classifier) -> dict[str, torch.Tensor]:
    """The state of the evaluation network: ``model``'s without the source attention branches."""
    return {k: v for k, v in model.state_dict().items() if ".source_fc1." not in k}


def export_classifier(
    path: Path, model: Classifier, cfg: AdaptConfig, classes: tuple[str, ...], training: dict[str, Any]
) -> None:
    """Write the evaluation network (target branches, corrections) as a model file (:mod:`models.model_file`)."""
    plain = Classifier(build_backbone(cfg.backbone, model.backbone.channels, attention=True), len(classes),
                       correction=cfg.correction)
    plain.load_state_dict(evaluation_state(model))
    correction = None
    if cfg.correction:
        correction = {"feature_correction": plain.feature_correction, "output_correction": plain.output_correction}
    save_model(path, plain.backbone, image_size=cfg.image_size, training=training, head=plain.head, classes=classes,
               correction=correction)
