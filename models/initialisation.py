"""Where a backbone starts: ``scratch``, ``imagenet``, ``ssl:RUN`` or the path of a model file.

:func:`initialise` starts a backbone from ``scratch``, ``imagenet``
(torchvision's file in torch.hub's cache, :func:`imagenet_weights_file`; a
1-channel stem gets the sum of the RGB filters), ``ssl:RUN`` (a run folder's
final ``backbone.safetensors``) or the path of a model file
(:mod:`models.model_file`), and returns the provenance to record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torchvision

from models.backbones import Backbone, fit_problem, get_backbone_spec, plain_into_attention
from models.model_file import BACKBONE_FILE, load_backbone_weights
from plumbing.errors import UserError
from plumbing.files import sha256_file

# Old torchvision DenseNet checkpoints (the ImageNet file among them) name ``norm1`` etc. ``norm.1``.
_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _imagenet_weights(name: str) -> torchvision.models.WeightsEnum:
    spec = get_backbone_spec(name)
    if spec.imagenet is None:
        raise UserError(f"{name} has no ImageNet weights; use --init scratch")
    return torchvision.models.get_weight(spec.imagenet)


def imagenet_weights_file(name: str) -> Path:
    """Where torch.hub's cache holds (or would hold) the ImageNet weights of backbone ``name``.

    ``Path(torch.hub.get_dir()) / "checkpoints" / <basename of the weights' URL>``; ``torch.hub.get_dir``
    follows ``torch.hub.set_dir``, then ``$TORCH_HOME/hub``, then ``~/.cache/torch/hub``.
    """
    url = _imagenet_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_imagenet(backbone: Backbone) -> None:
    """Load torchvision's ImageNet weights from torch.hub's cache into ``backbone`` (never downloads).

    The classifier layer (``fc``/``classifier``) is dropped; a 1-channel stem gets the sum of the RGB filters.
    """
    url = _imagenet_weights(backbone.arch).url
    path = imagenet_weights_file(backbone.arch)
    if not path.is_file():
        raise UserError(
            f"no ImageNet weights for {backbone.arch} in {path.parent}; place {path.name} there "
            f"(download {url} on a machine with network access, "
            "or set TORCH_HOME to a folder whose hub/checkpoints holds it)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only refusals have no common type
        raise UserError(f"cannot read ImageNet weights {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no state dict of {backbone.arch}")
    expected = backbone.body.state_dict()
    body: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _DENSE_LAYER_KEY.sub(r"\1\2", str(key))
        if key.startswith(("fc.", "classifier.")):
            continue
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path} holds no state dict of {backbone.arch} ({key} is not a tensor)")
        target = expected.get(key)
        if target is not None and target.dim() == value.dim() == 4 and target.shape[1] == 1 and value.shape[1] == 3:
            value = value.sum(dim=1, keepdim=True)  # a grayscale image is R = G = B
        body[key] = value
    for key, value in expected.items():  # files older than BatchNorm's counter (DenseNet's) lack it
        if key.endswith(".num_batches_tracked"):
            body.setdefault(key, value)
    body = plain_into_attention(expected, body)
    problem = fit_problem(expected, body)
    if problem is not None:
        raise UserError(f"{path} does not fit a {backbone.arch} backbone: {problem}")
    backbone.body.load_state_dict(body)


def initialise(backbone: Backbone, init: str, runs_dir: Path) -> dict[str, Any]:
    """Initialise ``backbone`` as ``init`` says and return the provenance (JSON-ready).

    ``init`` is ``scratch`` (keep the random initialisation), ``imagenet``
    (:func:`load_imagenet`), ``ssl:RUN`` (``runs_dir / RUN / backbone.safetensors``,
    the final backbone of a run) or the path of a model file. The provenance is
    ``{"init", "file", "sha256", "trained_by", "training"}``: the file loaded
    and its SHA-256 (``None`` for scratch), and for a model file the program that
    trained it and its whole ``training`` record (for ImageNet, the torchvision
    weights name and ``None``).
    """
    provenance: dict[str, Any] = {"init": init, "file": None, "sha256": None, "trained_by": None, "training": None}
    if init == "scratch":
        return provenance
    if init == "imagenet":
        load_imagenet(backbone)
        path = imagenet_weights_file(backbone.arch)
        trained_by = get_backbone_spec(backbone.arch).imagenet
        return dict(provenance, file=str(path), sha256=sha256_file(path), trained_by=trained_by)
    if init.startswith("ssl:"):
        run = init.removeprefix("ssl:")
        path = runs_dir / run / BACKBONE_FILE
        if not run or not path.is_file():
            raise UserError(
                f"{init}: no {BACKBONE_FILE} in {runs_dir / run}; the run has not finished (or {run!r} is not a run)"
            )
    else:
        path = Path(init)
        if not path.is_file():
            raise UserError(f"--init {init}: no such model file; give scratch, imagenet, ssl:RUN or a model file")
    info = load_backbone_weights(backbone, path)
    return dict(
        provenance,
        file=str(path),
        sha256=info.sha256,
        trained_by=info.training.get("trained_by"),
        training=info.training,
    )
