"""One registry of data sets, so every command accepts a data set by name.

:data:`REGISTRY` is a plain table of names to :class:`~datasets.spec.DataSetSpec`
(each reader module defines its spec; importing a reader registers nothing);
:func:`build_dataset` builds any of them with the same keyword arguments.
Real data sets (and ``folder``, one's own images) find their root from the ``root`` argument (a command's
``--data-root`` flag) or, when it is not given, from the spec's environment
variable; phantoms need no files and refuse a root. The arguments shared by
every data set and the names of the reader options (``spec.options``) are
checked here, once for all readers, so a bad one is a one-line
:class:`UserError` whichever data set is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from plumbing.errors import UserError
from plumbing.lookup import look_up

from . import chexpert, folder, isic, nih, siim_covid, synthetic
from .label_tasks import LabelTask
from .options import flag, is_integer
from .phantoms import dataset as phantom
from .spec import DataSetSpec

if TYPE_CHECKING:
    from torch.utils.data import Dataset

REGISTRY: dict[str, DataSetSpec] = {
    spec.name: spec
    for spec in (
        chexpert.SPEC,
        nih.SPEC,
        siim_covid.SPEC,
        isic.SPEC,
        *phantom.SPECS.values(),
        synthetic.SPEC,
        folder.SPEC,
    )
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str, *, option: str | None = None) -> DataSetSpec:
    """The spec of a registered data set; a :class:`UserError` (:func:`plumbing.lookup.look_up`) names the known
    ones, after ``option`` when given."""
    return look_up("data set", name, REGISTRY, option=option)


def default_counts(held_out: bool = False) -> str:
    """The default image counts of the data sets that have one, for ``--help``: ``"phantom, phantom-nih: 2000"``."""
    by_count: dict[int, list[str]] = {}
    for spec in REGISTRY.values():
        count = spec.image_count(None, held_out=held_out)
        if count is not None:
            by_count.setdefault(count, []).append(spec.name)
    return "; ".join(f"{', '.join(named)}: {count}" for count, named in by_count.items())


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
        options: reader-specific options (documented by each reader, named by ``spec.options``).
    """
    spec = get_spec(name)
    spec.check_options(options)
    check_arguments(spec, split, task, resolution, augment)
    resolved = spec.resolve_root(root)
    return spec.factory(resolved, split=split, task=task, resolution=resolution, augment=augment, **options)


def check_arguments(spec: DataSetSpec, split: str, task: LabelTask | None, resolution: int, augment: bool) -> None:
    """One-line :class:`UserError` for a bad value of an argument every data set takes."""
    if not isinstance(split, str):
        raise UserError(f"{spec.name}: split must be a split name such as train or valid, not {split!r}")
    if task is not None:
        if not isinstance(task, LabelTask):
            raise UserError(f"{spec.name}: task must be a label task (datasets.label_tasks.label_task) or None")
        if spec.schema is None:
            raise UserError(
                f"{spec.name} has its own classes {spec.classes}; "
                "label tasks apply only to data sets with finding vectors"
            )
    if not is_integer(resolution) or resolution < 1:
        raise UserError(f"{spec.name}: resolution must be a positive number of pixels, not {resolution!r}")
    flag(spec.name, "augment", augment)
