"""One registry of data sets, so every command accepts a data set by name.

Each reader module registers a :class:`DataSetSpec`; :func:`build_dataset`
builds any of them with the same keyword arguments. Real data sets find their
root from the ``root`` argument (a command's ``--data-root`` flag) or, when it
is not given, from the spec's environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plumbing.cli import UserError

from .findings import FindingSchema

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from .label_tasks import LabelTask


@dataclass(frozen=True)
class DataSetSpec:
    """How to build one named data set.

    Attributes:
        name: registry name (``chexpert``, ``phantom``, ...).
        description: one line for ``--help`` and error messages.
        layout: the expected folder layout, quoted in errors about the root.
        env_var: environment variable naming the root; ``None`` when the data
            set needs no files (phantoms).
        channels: image channels (1 radiographs, 3 dermoscopy).
        schema: finding schema, or ``None`` when samples carry no findings.
        classes: fixed class names of the data set's own labels (ISIC,
            SIIM-COVID); ``None`` when classes come from a label task.
        factory: ``factory(root, split=..., task=..., resolution=..., augment=..., **options)``.
    """

    name: str
    description: str
    layout: str
    env_var: str | None
    channels: int
    schema: FindingSchema | None
    classes: tuple[str, ...] | None
    factory: Callable[..., Dataset]

    def resolve_root(self, root: str | Path | None) -> Path | str | None:
        """The data root from the argument or the environment; checks that a local one exists.

        An fsspec URL (``scheme://...``) is passed on unchanged for the reader to open.
        """
        if self.env_var is None:
            return None
        value = root if root is not None else os.environ.get(self.env_var)
        if value is None or str(value) == "":
            raise UserError(
                f"{self.name}: no data root given; pass --data-root or set {self.env_var} "
                f"to a folder with the layout {self.layout}"
            )
        if "://" in str(value):
            return str(value)
        path = Path(value).expanduser()
        if not path.is_dir():
            raise UserError(
                f"{self.name}: data root {path} is not a folder; expected the layout {self.layout} "
                f"(--data-root or {self.env_var})"
            )
        return path


_REGISTRY: dict[str, DataSetSpec] = {}


def register(spec: DataSetSpec) -> DataSetSpec:
    """Add a data set to the registry (module import time)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"data set {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    # Importing the reader modules registers them.
    from . import chexpert, isic, nih, phantom, siim_covid, synthetic  # noqa: F401


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_spec(name: str) -> DataSetSpec:
    """The spec of a registered data set; a :class:`UserError` names the known ones."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown data set {name!r}; known data sets: {', '.join(sorted(_REGISTRY))}") from None


def build_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    task: LabelTask | None = None,
    resolution: int = 256,
    augment: bool = False,
    **options: Any,
) -> Dataset:
    """Build a registered data set.

    Args:
        name: registry name.
        root: data root; falls back to the spec's environment variable.
        split: ``train`` or ``valid``/``val`` (readers document which they have).
        task: a label task; samples outside its classes are dropped and
            ``label`` is the class index. ``None`` keeps every sample with
            ``label = -1`` (or the data set's own class for ISIC / SIIM-COVID).
        resolution: square output size in pixels.
        augment: apply the training augmentations.
        options: reader-specific options (documented by each reader).
    """
    spec = get_spec(name)
    if task is not None and spec.schema is None:
        raise UserError(f"{name} has its own classes {spec.classes}; label tasks apply only to data sets with finding vectors")
    return spec.factory(spec.resolve_root(root), split=split, task=task, resolution=resolution, augment=augment, **options)
