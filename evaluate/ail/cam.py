"""Class activation maps for classifiers and the AIL score (attention inside the lungs).

AIL
    For an image with non-negative saliency map ``S`` and binary lung mask ``M`` (mask values > 0.5 are lung),
    ``AIL = sum(S * M) / sum(S)`` over the pixels: the fraction of the classifier's attention that falls on the
    lungs, in [0, 1], independent of the map's scale; 0 when ``S`` is all zero. :func:`summarise_ail` reduces the
    per-image values to a JSON-ready mean / population std / count, overall and per true class.

Map methods (:func:`saliency_maps`)
    ``"gradcam"``: Grad-CAM (Selvaraju et al. 2017) through :class:`monai.visualize.GradCAM`: the target layer's
    activations weighted by the spatial mean of the class score's gradient, summed over channels, ReLU.
    ``"cam"``: CAM (Zhou et al. 2016) through :class:`monai.visualize.CAM`: the linear classifier layer (``head``)
    applied at every position of the target layer, for models whose logits are that layer applied to the global
    average pool of the target layer; clamped at 0. Either map is upsampled bilinearly to the input's size and
    then divided by its own maximum, so each returned map lies in [0, 1] (an all-zero map stays zero).

MONAI pitfalls avoided
    * The default post-processing rescales each map to (max, min) -> (0, 1), i.e. *inverts* it; an identity
      post-processing is passed instead (monai's default upsampler, bilinear to the input size, is kept).
    * With ``class_idx=None`` (or one index) GradCAM backpropagates the sum of one class column over the whole
      batch; the batch is split by requested class and GradCAM runs once per class, so every image gets the map of
      its own class (images do not interact: the model is in eval mode during the call).
    * Gradients are needed: the call runs under ``torch.enable_grad()`` (callers may be under ``no_grad``) on a
      copy of the input that requires grad (so frozen models work too).
    * monai switches the model to eval and calls ``model.zero_grad()``; every module's training flag and every
      parameter's ``.grad`` are restored afterwards.
    * An in-place op right after the hooked module breaks the full backward hook: every ``inplace`` flag in the
      model is switched off during the call and restored afterwards.
    * monai registers its hooks for good (it keeps no handle); the hooks it added are removed after the call.
    * A module run more than once per forward pass (a shared ReLU) keeps only its last activation; such a target
      layer is refused with a :class:`~plumbing.errors.UserError`.

:func:`overlay_grid` writes a PNG grid of radiographs with the map in a jet colour map, the lung contour in green
and a "true / pred" caption (red when wrong).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import CAM, GradCAM
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from plumbing.errors import UserError
from plumbing.files import atomic_path
from plumbing.lookup import look_up

__all__ = ["METHODS", "attention_inside_lungs", "overlay_grid", "saliency_maps", "summarise_ail"]

METHODS = ("gradcam", "cam")
CONTOUR_RGB = (0, 255, 0)
WRONG_RGB = (220, 0, 0)
MIN_TILE = 128  # smallest tile side in pixels after (nearest) upscaling
HEAT_ALPHA = 0.45  # weight of the heat map in the blend


def attention_inside_lungs(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """AIL per image: ``sum(S * M) / sum(S)``; ``saliency`` [B, 1, H, W] >= 0, ``mask`` [B, 1, H, W] (> 0.5 is lung).

    Returns a float tensor [B]; 0 for an image whose map sums to 0.
    """
    if saliency.ndim != 4 or saliency.shape[1] != 1:
        raise UserError(f"saliency must be [B, 1, H, W], got shape {tuple(saliency.shape)}")
    if mask.shape != saliency.shape:
        raise UserError(f"lung mask shape {tuple(mask.shape)} differs from saliency shape {tuple(saliency.shape)}")
    s = saliency.detach().float()
    if bool((s < 0).any()):
        raise UserError(f"saliency must be non-negative, its minimum is {s.min().item():.4g}")
    inside = (s * (mask.detach() > 0.5).float()).sum(dim=(1, 2, 3))
    total = s.sum(dim=(1, 2, 3))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def _stats(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


def summarise_ail(values: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """JSON-ready summary of per-image AIL ``values`` [N] by true class ``labels`` [N] (indices into ``classes``).

    ``{"mean", "std", "n", "per_class": {name: {"mean", "std", "n"}}}``; std is the population std (ddof 0);
    mean and std are None where n is 0.
    """
    v = values.detach().cpu().double().reshape(-1).numpy()
    y = labels.detach().cpu().reshape(-1).numpy()
    if v.shape != y.shape:
        raise UserError(f"{v.size} AIL values but {y.size} labels")
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise UserError(
            f"labels must lie in [0, {len(classes) - 1}] for classes {list(classes)}, got {y.min()}..{y.max()}"
        )
    summary = _stats(v)
    summary["per_class"] = {name: _stats(v[y == k]) for k, name in enumerate(classes)}
    return summary


def _layer_names(model: nn.Module) -> str:
    names = [name for name, _ in model.named_modules() if name]
    return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


@contextmanager
def _model_state_kept(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Switch off in-place ops; afterwards restore them, training flags, ``.grad``s and ``layer``'s hooks."""
    modules = list(model.modules())
    training = [m.training for m in modules]
    inplace = {m: m.inplace for m in modules if isinstance(getattr(m, "inplace", None), bool)}
    grads = [(p, p.grad) for p in model.parameters()]
    hook_dicts = [getattr(layer, name) for name in ("_forward_hooks", "_backward_hooks")]
    hook_ids = [set(d) for d in hook_dicts]
    for m in inplace:
        m.inplace = False
    try:
        yield
    finally:
        for d, ids in zip(hook_dicts, hook_ids, strict=True):
            for key in set(d) - ids:
                del d[key]
        for name in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            extra = getattr(layer, name, {})
            for key in set(extra) - set(layer._forward_hooks):
                del extra[key]
        for m, flag in inplace.items():
            m.inplace = flag
        for m, flag in zip(modules, training, strict=True):
            m.training = flag
        for p, g in grads:
            p.grad = g


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def saliency_maps(
    model: nn.Module,
    images: torch.Tensor,
    class_idx: torch.Tensor,
    target_layer: str,
    method: str = "gradcam",
    fc_layer: str = "head",
) -> torch.Tensor:
    """Non-negative class activation maps [B, 1, H, W] at the input's resolution, for class ``class_idx[b]`` [B].

    ``method`` is ``"gradcam"`` (monai GradCAM on ``target_layer``) or ``"cam"`` (monai CAM on ``target_layer``
    with the linear layer ``fc_layer``, clamped at 0). Each map is upsampled bilinearly to the input size and
    normalised by its own maximum to [0, 1] (an all-zero map stays zero). Works under ``torch.no_grad()``; the
    model's training flags, in-place flags, parameter gradients and hooks are as before the call. Returns a detached
    float tensor on the images' device.
    """
    look_up("saliency method", method, METHODS)
    modules = dict(model.named_modules())
    for name in (target_layer, fc_layer) if method == "cam" else (target_layer,):
        if not name or name not in modules:
            raise UserError(f"layer {name!r} not found; the model has {_layer_names(model)}")
    if images.ndim != 4:
        raise UserError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    classes = class_idx.detach().cpu().reshape(-1)
    if classes.numel() != images.shape[0] or classes.is_floating_point():
        raise UserError(f"class_idx must hold one integer per image ({images.shape[0]}), got {tuple(class_idx.shape)}")
    head = modules.get(fc_layer)
    n_classes = head.out_features if isinstance(head, nn.Linear) else None
    if classes.numel() and (classes.min() < 0 or (n_classes is not None and classes.max() >= n_classes)):
        bound = n_classes if n_classes is not None else "number of classes"
        raise UserError(f"class_idx must lie in [0, {bound}), got {classes.min()}..{classes.max()}")

    layer = modules[target_layer]
    calls = [0]

    def count(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        calls[0] += 1

    def run(fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] = 0
        out = fn(*args, **kwargs)
        if calls[0] != 1:
            raise UserError(f"layer {target_layer!r} runs {calls[0]} times per forward pass; hook a module used once")
        return out

    out = torch.zeros(images.shape[0], 1, *images.shape[2:], dtype=torch.float32, device=images.device)
    if images.shape[0] == 0:
        return out
    handle = layer.register_forward_hook(count)
    try:
        with _model_state_kept(model, layer), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            if method == "gradcam":
                cam = GradCAM(model, target_layers=target_layer, postprocessing=_identity)
                for k in classes.unique().tolist():
                    rows = (classes == k).nonzero().reshape(-1).to(images.device)
                    out[rows] = run(cam, x[rows], class_idx=k).detach().float()
            else:
                cam = CAM(model, target_layers=target_layer, fc_layers=fc_layer, postprocessing=_identity)
                out = run(cam, x, class_idx=classes.tolist()).detach().float().clamp_min(0)
    finally:
        handle.remove()
    peak = out.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, out / peak.clamp_min(torch.finfo(out.dtype).tiny), torch.zeros_like(out))


def _jet(t: np.ndarray) -> np.ndarray:
    """Jet-like colours (dark blue -> cyan -> yellow -> dark red) for ``t`` in [0, 1]; uint8 [..., 3]."""
    levels = np.linspace(0.0, 1.0, 256)
    lut = np.clip(1.5 - np.abs(4.0 * levels[:, None] - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (lut * 255).round().astype(np.uint8)[np.clip(t * 255, 0, 255).round().astype(np.int64)]


def overlay_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    true: Sequence[int],
    pred: Sequence[int],
    classes: Sequence[str],
    path: Path,
    columns: int = 8,
) -> None:
    """Write one PNG (atomically) of heat-map tiles, ``columns`` tiles wide.

    ``images`` [B, 1 or 3, H, W] in [0, 1] (shown as grey), ``maps`` [B, 1, H, W] >= 0 (each shown divided by its
    maximum, jet colours blended on the radiograph), ``masks`` [B, 1, H, W] (> 0.5 is lung; its contour is drawn
    in green). Tiles are upscaled (nearest) to at least 128 px a side; under each tile a caption
    "true: <name> / pred: <name>", red when the prediction is wrong. Empty grid cells stay white.
    """
    b = images.shape[0]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or b == 0:
        raise UserError(f"images must be [B>0, 1 or 3, H, W], got shape {tuple(images.shape)}")
    expected = (b, 1, *images.shape[2:])
    if tuple(maps.shape) != expected or tuple(masks.shape) != expected:
        raise UserError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must both be {expected}")
    if len(true) != b or len(pred) != b:
        raise UserError(f"{b} images but {len(true)} true and {len(pred)} predicted labels")
    if columns < 1:
        raise UserError(f"columns must be >= 1, got {columns}")
    scale = math.ceil(MIN_TILE / min(images.shape[2:]))

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t.detach().float().cpu(), scale_factor=scale, mode="nearest")

    grey = up(images.mean(dim=1, keepdim=True)).clamp(0, 1)[:, 0].numpy()
    heat = up(maps).clamp_min(0)
    heat = (heat / heat.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12))[:, 0].numpy()
    lung = (up(masks) > 0.5).float()
    eroded = 1.0 - F.max_pool2d(1.0 - lung, kernel_size=5, stride=1, padding=2)  # 2 px inner contour
    contour = ((lung - eroded) > 0)[:, 0].numpy()

    rgb = (1 - HEAT_ALPHA) * grey[..., None] * 255 + HEAT_ALPHA * _jet(heat).astype(np.float64)
    tiles = rgb.round().clip(0, 255).astype(np.uint8)
    tiles[contour] = CONTOUR_RGB

    font = ImageFont.load_default()
    _, top, _, bottom = font.getbbox("Agpy/:")
    line = bottom - top + 2
    caption = 2 * line + 4
    _, th, tw, _ = tiles.shape
    rows = math.ceil(b / columns)
    cells = np.full((rows * columns, th + caption, tw, 3), 255, dtype=np.uint8)
    cells[:b, :th] = tiles
    grid = cells.reshape(rows, columns, th + caption, tw, 3).transpose(0, 2, 1, 3, 4)
    canvas = Image.fromarray(np.ascontiguousarray(grid.reshape(rows * (th + caption), columns * tw, 3)))
    draw = ImageDraw.Draw(canvas)
    for i, (t, p) in enumerate(zip(true, pred, strict=True)):
        text = f"true: {classes[t]} / pred: {classes[p]}"
        if draw.textlength(text, font=font) > tw - 4:
            text = f"true: {classes[t]} /\npred: {classes[p]}"
        x, y = (i % columns) * tw + 2, (i // columns) * (th + caption) + th + 2 - top
        draw.multiline_text((x, y), text, fill=(0, 0, 0) if t == p else WRONG_RGB, font=font, spacing=2)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
