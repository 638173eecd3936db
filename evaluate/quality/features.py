"""Feature extractors for the quality report, and features cached by a content key.

An extractor maps float images ``[B, C, r, r]`` in [0, 1] to features ``[B, D]``:

* a model file of the platform (:mod:`models.model_file`: a backbone or a
  classifier file): the backbone's globally averaged last feature maps, at
  the file's image size (:func:`model_file_extractor`);
* torchxrayvision's DenseNet-121 (``densenet121-res224-all``) when its weights
  file is already on disk (torchxrayvision downloads weights at run time and
  none ships in its wheel): its pooled ``features2`` at 224 px, inputs
  rescaled to its [-1024, 1024] range; the Frechet distance on these is the
  FXD (:func:`xrv_extractor`).

:class:`FeatureCache` keeps the features of one image set and one extractor
in ``<cache>/<key>.pt``, ``key = sha256(extractor key, image-set content key)``
(:meth:`evaluate.quality.image_sets.ImageSet.content_key`), so the same images are
never passed through the same network twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from evaluate.quality.image_sets import ImageSet
from models.backbones import build_backbone
from models.model_file import load_backbone_weights, read_model_info
from plumbing.errors import UserError
from plumbing.files import atomic_path, sha256_file
from plumbing.precision import bf16_autocast, memory_layout

XRV_WEIGHTS = "densenet121-res224-all"
XRV_CHOICE = "xrv"
"""``--features xrv``: torchxrayvision's DenseNet-121 from its weights cache."""
XRV_CACHE_ENV = "CXR_XRV_CACHE"


@dataclass
class FeatureExtractor:
    """A frozen network giving features of images in [0, 1] at ``image_size``; ``key`` names its weights."""

    name: str
    key: str
    image_size: int
    channels: int
    module: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None


def model_file_extractor(path: Path) -> FeatureExtractor:
    """The backbone of model file ``path`` (a backbone or a classifier file) as an extractor."""
    info = read_model_info(path)
    backbone = build_backbone(info.architecture, info.channels, info.attention)
    load_backbone_weights(backbone, info.path)
    trained = info.training.get("data") or "unrecorded data"
    return FeatureExtractor(
        name=f"{info.architecture} backbone of {info.path} (trained on {trained})", key=f"model:{info.sha256}",
        image_size=info.image_size, channels=info.channels, module=backbone.eval().requires_grad_(False),
    )


def xrv_weights_file(cache_dir: Path | None = None) -> Path:
    """Where torchxrayvision keeps the DenseNet-121 weights (``$CXR_XRV_CACHE`` or its own cache folder)."""
    import torchxrayvision as xrv

    folder = cache_dir or Path(os.environ.get(XRV_CACHE_ENV) or Path(xrv.utils.get_cache_dir()))
    return Path(folder) / os.path.basename(xrv.models.model_urls[XRV_WEIGHTS]["weights_url"])


class _XrvFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features2(x)


def xrv_extractor(cache_dir: Path | None = None) -> FeatureExtractor:
    """torchxrayvision's DenseNet-121 when its weights are on disk; else one :class:`UserError` line."""
    import torchxrayvision as xrv

    weights = xrv_weights_file(cache_dir)
    if not weights.is_file():
        raise UserError(
            f"--features {XRV_CHOICE}: torchxrayvision's {XRV_WEIGHTS} weights are not on disk at {weights} "
            f"(this machine cannot download them); put the file there, set {XRV_CACHE_ENV}, or pass --features PATH"
        )
    model = xrv.models.DenseNet(weights=XRV_WEIGHTS, cache_dir=str(weights.parent) + os.sep)
    return FeatureExtractor(
        name=f"torchxrayvision DenseNet-121 ({XRV_WEIGHTS}), pooled features (FXD)",
        key=f"xrv:{sha256_file(weights)}", image_size=224, channels=1,
        module=_XrvFeatures(model).eval().requires_grad_(False), prepare=lambda x: x * 2048.0 - 1024.0,
    )


@torch.no_grad()
def apply_network(
    module: nn.Module, images: ImageSet, image_size: int, *, device: torch.device, amp: bool = False,
    batch_size: int = 256, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None, desc: str = "",
    progress: bool = True,
) -> torch.Tensor:
    """``module`` over every image of ``images`` (in [0, 1], resized to ``image_size``), float32 outputs on the CPU."""
    module = module.to(device).eval()
    layout = memory_layout(device)
    outputs = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc or images.description, unit="batch",
                      disable=not progress, leave=False):
        x = images.images[start : start + batch_size].to(device).float() / 255.0
        if x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        if prepare is not None:
            x = prepare(x)
        with bf16_autocast(device, amp):
            outputs.append(module(x.contiguous(memory_format=layout)).float().cpu())
    return torch.cat(outputs)


class FeatureCache:
    """Features of (extractor, image set) pairs in ``folder``, computed once (module docstring)."""

    def __init__(self, folder: Path, device: torch.device, amp: bool, progress: bool) -> None:
        self.folder, self.device, self.amp, self.progress = Path(folder), device, amp, progress

    def path(self, extractor: FeatureExtractor, images: ImageSet) -> Path:
        key = hashlib.sha256(f"{extractor.key}|{extractor.image_size}|{images.content_key()}".encode()).hexdigest()
        return self.folder / f"{key}.pt"

    def features(self, extractor: FeatureExtractor, images: ImageSet) -> torch.Tensor:
        """``[N, D]`` float32 features of ``images``, read from the cache or computed and cached."""
        if images.images.shape[1] != extractor.channels:
            raise UserError(f"{extractor.name} reads {extractor.channels}-channel images; {images.description} "
                            f"has {images.images.shape[1]}")
        path = self.path(extractor, images)
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.shape[0] == len(images):
                return cached
        out = apply_network(extractor.module, images, extractor.image_size, device=self.device, amp=self.amp,
                            prepare=extractor.prepare, desc=f"features: {images.description}", progress=self.progress)
        with atomic_path(path) as tmp:
            torch.save(out, tmp)
        return out
