"""Attention inside the lungs of a classifier over a data set: AIL figures, an overlay grid and a summary.

:func:`measure_attention` runs a classifier over the first ``max_images``
images of a data set, computes for each the saliency map of one class (the
predicted class, or the true one) with :func:`evaluate.ail.cam.saliency_maps`,
and its AIL (:func:`evaluate.ail.cam.attention_inside_lungs`) against the lung
mask (:class:`evaluate.ail.lung_masks.MaskSource`). :func:`write_attention`
writes ``attention.json`` (mean and standard deviation overall and per
true class, with the accuracy on these images and ``uniform_map_ail``, the
AIL a map spread evenly over the image would score: the lungs' mean share
of the image), ``attention.png`` (the
overlay grid: image, heat map, lung contour, true and predicted class) and
``attention.md`` (a short summary) into the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from datasets.sample import IMAGE, LABEL
from evaluate.ail.cam import attention_inside_lungs, overlay_grid, saliency_maps, summarise_ail
from evaluate.ail.lung_masks import MaskSource
from models.backbones import Classifier
from plumbing.files import atomic_path, write_json_atomic

CLASS_OF = ("predicted", "true")


@dataclass
class Attention:
    """Per-image results, and the first images kept for the grid."""

    ail: torch.Tensor
    lung_fraction: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor
    images: torch.Tensor
    maps: torch.Tensor
    masks: torch.Tensor


def measure_attention(
    model: Classifier, dataset: Any, masks: MaskSource, *, method: str, class_of: str, max_images: int,
    batch_size: int, keep: int, device: torch.device, progress: bool, layer: str | None = None,
) -> Attention:
    """AIL of ``model`` on ``dataset[:max_images]`` (module docstring); ``keep`` images stay for the grid.

    ``layer`` is the module whose maps are taken (default: the classifier's ``cam_layer``, its last feature map).
    """
    layer = layer or model.cam_layer
    model = model.to(device).eval()
    n = min(max_images, len(dataset))
    ail, fraction, labels, predicted, kept = [], [], [], [], []
    for start in tqdm(range(0, n, batch_size), desc="attention", unit="batch", disable=not progress):
        indices = list(range(start, min(start + batch_size, n)))
        fetch = getattr(dataset, "__getitems__", None)
        samples = fetch(indices) if fetch is not None else [dataset[i] for i in indices]
        images = torch.stack([s[IMAGE] for s in samples]).to(device)
        truth = torch.tensor([int(s[LABEL]) for s in samples])
        lungs = masks.masks(indices, samples).to(device)
        with torch.no_grad():
            pred = model(images).argmax(dim=1).cpu()
        target = pred if class_of == "predicted" else truth
        maps = saliency_maps(model, images, target, layer, method=method)
        ail.append(attention_inside_lungs(maps, lungs).cpu())
        fraction.append(lungs.float().mean(dim=(1, 2, 3)).cpu())
        labels.append(truth)
        predicted.append(pred)
        if sum(len(k[0]) for k in kept) < keep:
            kept.append((images.cpu(), maps.detach().cpu(), lungs.cpu()))
    images, maps, lungs = (torch.cat(parts)[:keep] for parts in zip(*kept, strict=True))
    return Attention(torch.cat(ail), torch.cat(fraction), torch.cat(labels), torch.cat(predicted), images, maps, lungs)


def write_attention(
    run_dir: Path, result: Attention, classes: tuple[str, ...], about: dict[str, Any], columns: int = 8
) -> dict[str, Any]:
    """``attention.json``, ``attention.png`` and ``attention.md`` in ``run_dir``; returns the JSON record."""
    summary = summarise_ail(result.ail, result.labels, classes)
    accuracy = float((result.predicted == result.labels).float().mean())
    uniform = float(result.lung_fraction.mean())
    record = about | {"ail": summary, "uniform_map_ail": uniform, "accuracy": accuracy, "images": int(len(result.ail))}
    write_json_atomic(run_dir / "attention.json", record)
    k = len(result.images)
    overlay_grid(result.images, result.maps, result.masks, result.labels[:k].tolist(),
                 result.predicted[:k].tolist(), classes, run_dir / "attention.png", columns=columns)
    lines = [
        f"# Attention inside the lungs: {run_dir.name}",
        "",
        f"{about['method']} maps of the {about['class_of']} class at layer `{about['layer']}`, on "
        f"{record['images']} images of {about['data']}. AIL = sum(S*M) / sum(S) (S: the map, M: the lung mask).",
        "",
        "| class | images | AIL mean | AIL std |",
        "|---|---|---|---|",
        f"| all | {summary['n']} | {summary['mean']:.3f} | {summary['std']:.3f} |",
    ]
    for name, stats in summary["per_class"].items():
        mean = "-" if stats["mean"] is None else f"{stats['mean']:.3f}"
        std = "-" if stats["std"] is None else f"{stats['std']:.3f}"
        lines.append(f"| {name} | {stats['n']} | {mean} | {std} |")
    lines += ["", f"A map spread evenly over the image would score the lungs' share of it: {uniform:.3f} on "
              f"these images. Accuracy on these images: {accuracy:.3f}.", "",
              "![overlay: image, heat map, lung contour (green), true and predicted class](attention.png)", ""]
    with atomic_path(run_dir / "attention.md") as tmp:
        tmp.write_text("\n".join(lines))
    return record
