"""Label fidelity while a GAN trains: does a reference classifier see the class each condition asks for?

``synth.train --fidelity-classifier PATH`` (a classifier file of
``evaluate.finetune`` or ``evaluate.synthetic``, trained on phantoms or on the
reference data) measures the EMA generator at every snapshot: for the
classifier's label task (the ``0s`` task of its classes, or
``--fidelity-task``) it renders ``per_class`` images of every class, their
conditions drawn as ``synth.generate`` draws them (:class:`synth.conditions.ConditionSampler`,
empirical devices for ``0s``) and their latents from fixed seeds, so
successive snapshots are compared on the same latents and conditions. The
agreement of a class is the share of its images the classifier assigns to
it (``evaluate.synthetic``'s label fidelity). Nothing it draws touches the
training's random streams, so a run with the probe trains exactly as one
without.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from datasets.findings import FindingSchema
from datasets.label_tasks import VERSIONS, LabelTask, label_task, parse_label_task
from models.model_file import load_classifier
from plumbing.errors import UserError
from synth.generator import Generator

from .conditions import ConditionSampler
from .rendering import sample_latents, sample_seeds

PROBE_SPLIT = "fidelity-probe"


def probe_task(classes: tuple[str, ...], asked: str | None) -> LabelTask:
    """The label task of the probe: ``asked`` (``V-S``), else the ``0s`` task with ``classes``."""
    if asked is not None:
        task = parse_label_task(asked, "--fidelity-task")
        if task.classes != classes:
            raise UserError(f"--fidelity-task {task.name} has the classes {', '.join(task.classes)}; the "
                            f"classifier's are {', '.join(classes)}")
        return task
    for version, names in VERSIONS.items():
        if names == classes:
            return label_task(version, "0s")
    raise UserError(f"the fidelity classifier's classes {', '.join(classes)} are no label task's")


class FidelityProbe:
    """Renders the probe's images with a generator and scores them with the classifier (module docstring)."""

    def __init__(
        self, classifier: Path, schema: FindingSchema, vectors: np.ndarray, *, task: str | None = None,
        per_class: int = 32, seed: int = 0, device: torch.device | str = "cpu",
    ) -> None:
        self.model, info = load_classifier(classifier, device)
        if info.channels != 1:
            raise UserError(f"{classifier} classifies {info.channels}-channel images, not radiographs")
        assert info.classes is not None  # load_classifier refuses a bare backbone
        self.task = probe_task(info.classes, task)
        self.image_size, self.device = info.image_size, torch.device(device)
        sampler = ConditionSampler(self.task, schema, vectors, devices="empirical" if self.task.setting == "0s"
                                   else None)
        indices = np.arange(per_class * len(self.task.classes))
        self.labels = torch.from_numpy(sampler.labels(indices))
        self.conditions = torch.from_numpy(sampler.conditions(seed, PROBE_SPLIT, indices))
        self.latents: dict[int, torch.Tensor] = {}
        self.seeds = sample_seeds(seed, PROBE_SPLIT, indices)

    @torch.no_grad()
    def measure(self, generator: Generator, resolution: int, alpha: float, batch: int = 64) -> dict[str, float]:
        """Per-class agreement of the classifier with the intended classes of the generator's images."""
        z = self.latents.setdefault(generator.z_dim, sample_latents(self.seeds, generator.z_dim))
        predicted = []
        for start in range(0, len(z), batch):
            images = generator(z[start : start + batch].to(self.device),
                               self.conditions[start : start + batch].to(self.device), resolution=resolution,
                               alpha=alpha, noise_mode="const")
            x = ((images.float().clamp(-1, 1) + 1) / 2).contiguous()
            if x.shape[-1] != self.image_size:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            predicted.append(self.model(x).argmax(dim=1).cpu())
        hits = torch.cat(predicted) == self.labels
        return {name: float(hits[self.labels == c].float().mean()) for c, name in enumerate(self.task.classes)}


def caption_grid(path: Path, agreement: dict[str, float], task: LabelTask) -> None:
    """Append a line ``label fidelity (task): class value, ...`` below the sample grid at ``path`` (in place)."""
    grid = Image.open(path).convert("RGB")
    font = ImageFont.load_default()
    text = f"label fidelity ({task.name}): " + ", ".join(f"{c} {v:.2f}" for c, v in agreement.items())
    out = Image.new("RGB", (grid.width, grid.height + 14), "white")
    out.paste(grid, (0, 0))
    ImageDraw.Draw(out).text((2, grid.height + 1), text, fill="black", font=font)
    out.save(path, format="PNG")
