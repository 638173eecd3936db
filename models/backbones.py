"""One registry of backbones, so every trainer and evaluator accepts a backbone by name.

:data:`BACKBONES` is a plain table of names to :class:`BackboneSpec`:
torchvision's ResNet-18/34/50 and DenseNet-121 (built with ``weights=None``,
never downloaded) and ``tiny``, a three-stage CNN for tests. A
:class:`Backbone` wraps the spec's ``body`` (the network up to its last
feature maps, classifier layer removed, stem convolution built for 1-channel
radiographs or 3-channel ISIC images); :class:`Classifier` puts one linear
``head`` on its pooled features, as ``head(backbone(x))``, so that
``monai.visualize.CAM(fc_layers="head")`` and
``GradCAM(target_layers=classifier.cam_layer)`` work on it.

Two optional parts carry what domain adaptation (DCAN, :mod:`adapt`) trains,
so its exported classifiers load here like any other:

* ``attention=True``: a :class:`ChannelAttention` (squeeze-and-excitation:
  ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``, reduction 16) on the last
  batch-norm output of every residual block of a ResNet, before the residual
  addition; the block's ``bn2`` (basic) or ``bn3`` (bottleneck) becomes
  ``Sequential(norm=<the batch norm>, attention=<the module>)``.
  Plain weights (ImageNet, a backbone file without attention) load into such
  a backbone with the attention modules left at their initialisation
  (:func:`plain_into_attention`).
* ``correction=True`` on a :class:`Classifier`: residual correction blocks
  ``f^ = f + feature_correction(f)`` on the pooled features and
  ``g^ = z + output_correction(z)``, ``z = head(f^)``, on the logits (CAM,
  which reads ``head`` alone, does not describe such a classifier; Grad-CAM does).

Grad-CAM layers (names in ``Classifier.named_modules()``):

* ResNet: ``backbone.body.layer4`` (the last residual stage; nothing follows it in the body);
* DenseNet-121: ``backbone.body.features.denseblock4`` (the last dense block; ``norm5`` and a
  non-in-place ReLU follow it, as in torchvision's ``DenseNet.forward``);
* tiny: ``backbone.body.stage3``.

No CAM layer is followed by an in-place operation or used twice in a forward pass.

Starting a backbone from ImageNet, a model file or an SSL run is :mod:`models.initialisation`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from plumbing.errors import UserError
from plumbing.lookup import look_up

CHANNELS = (1, 3)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: registry name.
        description: one line for ``--help`` texts and reports.
        feature_dim: size of the pooled features (channels of the last feature maps).
        cam_layer: module name in ``Classifier.named_modules()`` that Grad-CAM hooks.
        build: channels -> the body module, mapping ``[B, C, H, W]`` to feature maps ``[B, D, h, w]``.
        imagenet: torchvision weights name (``torchvision.models.get_weight``); ``None``: none exist.
    """

    name: str
    description: str
    feature_dim: int
    cam_layer: str
    build: Callable[[int], nn.Module]
    imagenet: str | None
    residual: bool = False


def _stem(channels: int) -> nn.Conv2d:
    """The 7x7 stride-2 stem convolution of ResNet and DenseNet for ``channels`` inputs."""
    return nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)


def _resnet(factory: Callable[..., torchvision.models.ResNet]) -> Callable[[int], nn.Module]:
    def build(channels: int) -> nn.Module:
        net = factory(weights=None)
        if channels != 3:
            net.conv1 = _stem(channels)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))

    return build


def _densenet121(channels: int) -> nn.Module:
    net = torchvision.models.densenet121(weights=None)
    if channels != 3:
        net.features.conv0 = _stem(channels)
    return nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU(inplace=False)))


def _tiny(channels: int) -> nn.Module:
    stages, width = [], channels
    for i, out in enumerate((16, 32, 64), start=1):
        stage = nn.Sequential(
            nn.Conv2d(width, out, kernel_size=3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()
        )
        stages.append((f"stage{i}", stage))
        width = out
    return nn.Sequential(OrderedDict(stages))


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "resnet18", "ResNet-18 (torchvision)", 512, "backbone.body.layer4",
            _resnet(torchvision.models.resnet18), "ResNet18_Weights.IMAGENET1K_V1", residual=True,
        ),
        BackboneSpec(
            "resnet34", "ResNet-34 (torchvision)", 512, "backbone.body.layer4",
            _resnet(torchvision.models.resnet34), "ResNet34_Weights.IMAGENET1K_V1", residual=True,
        ),
        BackboneSpec(
            "resnet50", "ResNet-50 (torchvision)", 2048, "backbone.body.layer4",
            _resnet(torchvision.models.resnet50), "ResNet50_Weights.IMAGENET1K_V1", residual=True,
        ),
        BackboneSpec(
            "densenet121", "DenseNet-121 (torchvision)", 1024, "backbone.body.features.denseblock4",
            _densenet121, "DenseNet121_Weights.IMAGENET1K_V1",
        ),
        BackboneSpec(
            "tiny", "three conv-BN-ReLU stages of 16/32/64 channels, stride 2 (for tests)", 64,
            "backbone.body.stage3", _tiny, None,
        ),
    )
}  # fmt: skip


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone; a :class:`UserError` names the known ones."""
    return look_up("backbone", name, BACKBONES)


ATTENTION_REDUCTION = 16
CORRECTION_HIDDEN = 128
"""Hidden width of the feature correction block (DCAN's official size)."""


class ChannelAttention(nn.Module):
    """Channel attention ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`` with ``fc1: C -> C/16``, ``fc2: C/16 -> C``."""

    def __init__(self, channels: int, reduction: int = ATTENTION_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def weights(self, squeezed: torch.Tensor, fc1: nn.Linear) -> torch.Tensor:
        """``sigmoid(fc2(relu(fc1(s))))`` for pooled ``s`` ``[B, C]``: the channel weights ``[B, C]``."""
        return torch.sigmoid(self.fc2(torch.relu(fc1(squeezed))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x.mean(dim=(2, 3)), self.fc1)[:, :, None, None].to(x.dtype)


def residual_blocks(body: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Every torchvision residual block of ``body``: ``(name, block, name of its last batch norm)``."""
    found = []
    for name, module in body.named_modules():
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            found.append((name, module, "bn3"))
        elif isinstance(module, torchvision.models.resnet.BasicBlock):
            found.append((name, module, "bn2"))
    return found


def add_attention(body: nn.Module, factory: Callable[[int], nn.Module]) -> None:
    """Put ``factory(C)`` after the last batch norm of every residual block of ``body`` (module docstring)."""
    for _, block, norm_name in residual_blocks(body):
        norm = getattr(block, norm_name)
        setattr(block, norm_name, nn.Sequential(OrderedDict(norm=norm, attention=factory(norm.num_features))))


class Backbone(nn.Module):
    """A registered backbone's body for ``channels``-channel images, with channel attention when ``attention``.

    ``forward_features`` gives the last feature maps ``[B, feature_dim, h, w]``
    (what CAM uses), ``forward`` their global average ``[B, feature_dim]``.
    The state dict holds the body's tensors under ``body.``.
    """

    def __init__(self, arch: str, channels: int, attention: bool = False) -> None:
        super().__init__()
        spec = get_backbone_spec(arch)
        if channels not in CHANNELS:
            raise UserError(f"{arch}: images must have 1 (radiographs) or 3 (ISIC) channels, not {channels!r}")
        if attention and not spec.residual:
            residual = ", ".join(n for n, s in BACKBONES.items() if s.residual)
            raise UserError(f"{arch} has no residual blocks for channel attention; use one of {residual}")
        self.arch = arch
        self.channels = channels
        self.feature_dim = spec.feature_dim
        self.attention = attention
        self.body = spec.build(channels)
        if attention:
            add_attention(self.body, ChannelAttention)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


def build_backbone(name: str, channels: int, attention: bool = False) -> Backbone:
    """A randomly initialised backbone; unknown ``name`` or channels other than 1 and 3 are a :class:`UserError`."""
    return Backbone(name, channels, attention)


def _correction_block(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(width, hidden), relu=nn.ReLU(), fc2=nn.Linear(hidden, width)))


class Classifier(nn.Module):
    """``head(backbone(x))``: logits ``[B, num_classes]`` from a backbone's pooled features.

    With ``correction`` the residual correction blocks of the module docstring
    act on the features and the logits (:meth:`corrected`).
    """

    def __init__(self, backbone: Backbone, num_classes: int, correction: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.correction = correction
        if correction:
            self.feature_correction = _correction_block(backbone.feature_dim, CORRECTION_HIDDEN)
            self.output_correction = _correction_block(num_classes, num_classes)

    @property
    def cam_layer(self) -> str:
        """The module Grad-CAM hooks, named as in :meth:`named_modules` (``backbone.`` + its name in the backbone)."""
        return get_backbone_spec(self.backbone.arch).cam_layer

    def corrected(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f^, g^)``: ``f^ = f + feature_correction(f)`` and ``g^ = z + output_correction(z)``, ``z = head(f^)``.

        Without correction blocks ``(f, head(f))``.
        """
        if not self.correction:
            return features, self.head(features)
        features = features + self.feature_correction(features)
        logits = self.head(features)
        return features, logits + self.output_correction(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.corrected(self.backbone(x))[1]


def plain_into_attention(
    expected: Mapping[str, torch.Tensor], given: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``given`` (a body state without channel attention) renamed for ``expected`` (one with it).

    ``<block>.bn2.weight`` becomes ``<block>.bn2.norm.weight`` where only the
    latter is expected, and the attention tensors ``given`` lacks keep
    ``expected``'s values (their initialisation). A state that already has
    attention tensors is returned unchanged.
    """
    if any(".attention." in k for k in given) or not any(".attention." in k for k in expected):
        return given
    renamed: dict[str, torch.Tensor] = {}
    for key, value in given.items():
        head, _, leaf = key.rpartition(".")
        nested = f"{head}.norm.{leaf}"
        renamed[nested if key not in expected and nested in expected else key] = value
    for key, value in expected.items():
        if ".attention." in key:
            renamed.setdefault(key, value)
    return renamed


def fit_problem(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """Why tensors ``given`` cannot be loaded into a state dict ``expected`` (first few differences), or ``None``."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} for {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    problems = [
        f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        if items
    ]
    return "; ".join(problems) or None
