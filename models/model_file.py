"""Model files: the one format every trainer exports and every evaluator reads.

A model file is a safetensors file. Its tensors are

* ``backbone.<name>`` for every entry ``<name>`` of the :class:`~models.backbones.Backbone`'s
  state dict (so ``backbone.body.layer4.0.conv1.weight`` for a ResNet), and
* for a classifier, ``head.weight`` ``[len(classes), feature_dim]`` and ``head.bias`` ``[len(classes)]``,
  and with correction blocks their ``feature_correction.*`` and ``output_correction.*`` tensors

(exactly the state dict of a :class:`~models.backbones.Classifier`, or of a bare
backbone under ``backbone.``), all contiguous CPU tensors. Its string metadata has one
key, ``cxr-model``, holding a JSON object::

    {"format": "cxr-model", "version": 1,
     "architecture": "resnet18",      # a name of models.backbones.BACKBONES
     "channels": 1,                   # 1 (radiographs) or 3 (ISIC)
     "image_size": 224,               # side in pixels of the square images it was trained on
     "feature_dim": 512,              # size of the pooled features (the architecture's)
     "classes": ["Normal", ...],      # the head's classes in logit order; null for a bare backbone
     "attention": false,              # channel attention in the residual blocks (optional, default false)
     "correction": false,             # correction blocks on features and logits (optional, default false)
     "training": {"trained_by": "python -m ssl.curriculum", "data": "...", "command": "...", ...}}

``attention`` and ``correction`` are the optional parts of
:class:`~models.backbones.Backbone` and :class:`~models.backbones.Classifier`
that domain adaptation trains; files without the keys have neither.

``training`` is what trained the model (:func:`training_record`, the same keys
for every trainer): ``trained_by`` (the program), ``data`` (a description of the
data), ``command`` (the exact command line), ``resumed_with`` (the commands that
resumed it), ``init`` (the provenance of its initial weights) and anything else
the trainer adds. By convention a run folder's final bare backbone is
:data:`BACKBONE_FILE` and its final classifier :data:`CLASSIFIER_FILE`. Reading a
model file never executes code (safetensors holds tensors and strings only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.backbones import (
    BACKBONES,
    CHANNELS,
    Backbone,
    Classifier,
    build_backbone,
    fit_problem,
    plain_into_attention,
)
from plumbing.errors import UserError
from plumbing.files import atomic_path, sha256_file
from plumbing.lookup import unknown_name

FORMAT = "cxr-model"
VERSION = 1
BACKBONE_FILE = "backbone.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"


@dataclass(frozen=True)
class ModelFileInfo:
    """A model file's metadata (``classes`` is ``None`` for a bare backbone) and the file's SHA-256."""

    path: Path
    architecture: str
    channels: int
    image_size: int
    feature_dim: int
    classes: tuple[str, ...] | None
    training: dict[str, Any]
    sha256: str
    attention: bool = False
    correction: bool = False


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside (Distributed)DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def training_record(trained_by: str, run: Mapping[str, Any], **details: Any) -> dict[str, Any]:
    """The ``training`` entry of a model file, built the same way by every trainer.

    ``run`` is the run's record as its trainer keeps it (``config.json``, see
    :func:`plumbing.run_folders.record_config`): ``data_description``,
    ``command``, ``resumed_with`` and ``init_provenance`` become ``data``,
    ``command``, ``resumed_with`` (``[]`` when absent) and ``init``
    (``None`` when absent). ``details`` are what the trainer adds (the epoch,
    the alignment, the step's key...); they may not reuse those names.
    """
    base = {"trained_by": trained_by, "data": run.get("data_description"), "command": run.get("command"),
            "resumed_with": list(run.get("resumed_with", [])), "init": run.get("init_provenance")}
    clash = sorted(set(base) & set(details))
    if clash:
        raise ValueError(f"training details may not replace {', '.join(clash)}")
    return base | details


def save_model(
    path: Path,
    backbone: Backbone,
    *,
    image_size: int,
    training: dict[str, Any],
    head: nn.Linear | None = None,
    classes: Sequence[str] | None = None,
    correction: Mapping[str, nn.Module] | None = None,
) -> None:
    """Write ``backbone`` (and a classifier's ``head`` with its ``classes``) as a model file, atomically.

    ``correction`` holds a corrected classifier's ``feature_correction`` and
    ``output_correction`` blocks. ``backbone`` and ``head`` may be wrapped (DistributedDataParallel,
    DataParallel, torch.compile) and their weights on any device or in channels_last: the file holds
    contiguous CPU copies.
    """
    backbone, head = _unwrap(backbone), None if head is None else _unwrap(head)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"save_model needs an models.backbones.Backbone, not {type(backbone).__name__}")
    if (head is None) != (classes is None):
        raise ValueError("save_model needs both head and classes for a classifier, neither for a bare backbone")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if head is not None and classes is not None:
        classes = [str(c) for c in classes]
        if head.in_features != backbone.feature_dim or head.out_features != len(classes):
            raise ValueError(
                f"head maps {head.in_features} features to {head.out_features} logits; "
                f"the backbone has {backbone.feature_dim} features and there are {len(classes)} classes"
            )
        state.update((f"head.{k}", v) for k, v in head.state_dict().items())
    if correction is not None:
        if head is None or set(correction) != {"feature_correction", "output_correction"}:
            raise ValueError("correction blocks need a head and exactly feature_correction and output_correction")
        for name, module in correction.items():
            state.update((f"{name}.{k}", v) for k, v in _unwrap(module).state_dict().items())
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": backbone.arch,
        "channels": backbone.channels,
        "image_size": int(image_size),
        "feature_dim": backbone.feature_dim,
        "classes": classes,
        "attention": backbone.attention,
        "correction": correction is not None,
        "training": training,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {FORMAT: json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _metadata_problem(meta: Any) -> str | None:
    """What is wrong with a parsed ``cxr-model`` record, or ``None``."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f'its "{FORMAT}" metadata is not a {FORMAT} record'
    if meta.get("version") != VERSION:
        return f"it has format version {meta.get('version')!r}; this program reads version {VERSION}"
    arch = meta.get("architecture")
    if arch not in BACKBONES:
        return unknown_name("architecture", arch, sorted(BACKBONES))
    if meta.get("channels") not in CHANNELS or not _is_int(meta.get("channels")):
        return f"channels must be 1 or 3, not {meta.get('channels')!r}"
    if not _is_int(meta.get("image_size")) or meta["image_size"] < 1:
        return f"image_size must be a positive number of pixels, not {meta.get('image_size')!r}"
    if meta.get("feature_dim") != BACKBONES[arch].feature_dim:
        return f"feature_dim {meta.get('feature_dim')!r} is not {arch}'s {BACKBONES[arch].feature_dim}"
    classes = meta.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes)
    ):
        return "classes must be a non-empty list of names or null"
    if not isinstance(meta.get("training"), dict):
        return "training must be an object"
    for key in ("attention", "correction"):
        if not isinstance(meta.get(key, False), bool):
            return f"{key} must be true or false, not {meta.get(key)!r}"
    if meta.get("correction", False) and classes is None:
        return "a bare backbone has no correction blocks"
    if meta.get("attention", False) and not BACKBONES[arch].residual:
        return f"{arch} has no residual blocks for channel attention"
    return None


def read_model_info(path: Path) -> ModelFileInfo:
    """The metadata of model file ``path``; a one-line :class:`UserError` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(FORMAT)
    except Exception as exc:  # safetensors raises its own error type for a damaged or foreign file
        raise UserError(f"{path} is not a model file (not safetensors: {str(exc).splitlines()[0]})") from exc
    if raw is None:
        raise UserError(f'{path} is not a model file of this project (no "{FORMAT}" metadata)')
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f'{path} is not a model file of this project ("{FORMAT}" metadata is not JSON)') from exc
    problem = _metadata_problem(meta)
    if problem is not None:
        raise UserError(f"{path} is not a valid model file: {problem}")
    classes = meta["classes"]
    return ModelFileInfo(
        path=path,
        architecture=meta["architecture"],
        channels=meta["channels"],
        image_size=meta["image_size"],
        feature_dim=meta["feature_dim"],
        classes=None if classes is None else tuple(classes),
        training=meta["training"],
        sha256=sha256_file(path),
        attention=meta.get("attention", False),
        correction=meta.get("correction", False),
    )


def _load_into(module: nn.Module, path: Path, prefix: str, what: str) -> None:
    """Load the tensors of ``path`` whose names start with ``prefix`` (stripped) into ``module``, strictly.

    Plain backbone tensors fit a backbone with channel attention (:func:`~models.backbones.plain_into_attention`).
    """
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # a file truncated after its header
        raise UserError(f"cannot read model file {path}: {str(exc).splitlines()[0]}") from exc
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    expected = module.state_dict()
    state = plain_into_attention(expected, state)
    problem = fit_problem(expected, state)
    if problem is not None:
        raise UserError(f"the tensors of {path} do not fit a {what}: {problem}")
    module.load_state_dict(state)


def load_backbone_weights(backbone: Backbone, path: Path) -> ModelFileInfo:
    """Load the backbone tensors of model file ``path`` (a backbone or a classifier file) into ``backbone``.

    Another architecture or channel count, or tensors that do not fit, are a one-line :class:`UserError`.
    """
    info = read_model_info(path)
    if info.architecture != backbone.arch:
        raise UserError(f"{info.path} holds a {info.architecture} backbone, not {backbone.arch}")
    if info.channels != backbone.channels:
        raise UserError(
            f"{info.path} holds a backbone for {info.channels}-channel images, not {backbone.channels}-channel"
        )
    if info.attention and not backbone.attention:
        raise UserError(f"{info.path} holds a backbone with channel attention; this {backbone.arch} has none")
    _load_into(backbone, info.path, "backbone.", f"{backbone.arch} backbone")
    return info


def load_classifier(path: Path, device: str | torch.device = "cpu") -> tuple[Classifier, ModelFileInfo]:
    """Build the classifier that model file ``path`` describes and load it, in eval mode on ``device``.

    A bare backbone file (no classes) is a :class:`UserError`.
    """
    info = read_model_info(path)
    if info.classes is None:
        raise UserError(f"{info.path} holds a bare {info.architecture} backbone, not a classifier (it has no classes)")
    backbone = build_backbone(info.architecture, info.channels, info.attention)
    classifier = Classifier(backbone, len(info.classes), correction=info.correction)
    _load_into(classifier, info.path, "", f"{info.architecture} classifier of {len(info.classes)} classes")
    return classifier.to(device).eval(), info
