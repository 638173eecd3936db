"""One registry of data sets, so every command accepts a data set by name.

:data:`REGISTRY` is a plain table of names to :class:`~datasets.spec.DataSetSpec`
(each reader module defines its spec; importing a reader registers nothing);
:func:`build_dataset` builds any of them with the same keyword arguments.
Real data sets find their root from the ``root`` argument (a command's
``--data-root`` flag) or, when it is not given, from the spec's environment
variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from plumbing.errors import UserError

from . import chexpert, isic, nih, siim_covid, synthetic
from .phantoms import dataset as phantom
from .spec import DataSetSpec

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from .label_tasks import LabelTask

REGISTRY: dict[str, DataSetSpec] = {
    spec.name: spec
    for spec in (
        chexpert.SPEC,
        nih.SPEC,
        siim_covid.SPEC,
        isic.SPEC,
        phantom.SPECS["phantom"],
        phantom.SPECS["phantom-nih"],
        synthetic.SPEC,
    )
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> DataSetSpec:
    """The spec of a registered data set; a :class:`UserError` names the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown data set {name!r}; known data sets: {', '.join(sorted(REGISTRY))}") from None


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
