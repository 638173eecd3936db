"""Every fact about one named data set: :class:`DataSetSpec`, the entry type of :mod:`datasets.registry`.

Reader modules each define their spec (``SPEC``); the registry is the one
table that names them. Commands ask the spec, never the data set's name, for
a fact: its held-out split, how many images to read when given no count and
how to cap the count (:meth:`DataSetSpec.image_count`,
:meth:`DataSetSpec.count_options`), its label table, channels and groups.
Adding a data set is one reader module and one spec.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plumbing.errors import OPTION, DataRoleError, UserError

from .findings import FindingSchema

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from .label_tables import LabelTable

COUNT_OPTIONS = ("length", "max_samples")
"""The reader options that set a data set's number of images, in the order they are preferred:
``length`` (the data set is generated at exactly that many images) and ``max_samples`` (a seeded
uniform subset of at most that many of its images, :func:`datasets.tabular.subset_rows`)."""


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
        options: the names of the reader options ``factory`` accepts (the
            ``**options`` of :func:`datasets.registry.build_dataset`); none by default.
        eval_split: the held-out split that evaluates a model (reported, never
            used for a choice): ``valid`` (the official validation split or the
            reader's documented held-out split), the phantoms' ``test`` seed
            stream, a store's ``val`` split.
        lengths: ``(training, evaluation)`` images a command reads when given
            no count, for a data set that is generated and so has no size of its
            own (phantoms); ``None``: every image of the split.
        label_table: ``label_table(csv, views=...)`` reads the label file whose
            finding vectors the data set's images carry (``csv=None``: the
            bundled training labels; phantoms sample theirs from it);
            ``None`` when there is none (own classes, a synthetic store).
        validation_split: the data set's own split that validates a model
            trained on its ``train`` split (chooses the learning rate and the
            best epoch): a store's ``val``; ``None``: a seeded part of the
            training split is held out instead
            (:func:`evaluate.protocol.task_data.validation_rows`).
        groups: what a group of images is where the reader knows it
            (``patient``, ``study``): a held-out part of the training split
            keeps whole groups; ``None``: images are held out one by one.
    """

    name: str
    description: str
    layout: str
    env_var: str | None
    channels: int
    schema: FindingSchema | None
    classes: tuple[str, ...] | None
    factory: Callable[..., Dataset]
    options: tuple[str, ...] = ()
    eval_split: str = "valid"
    lengths: tuple[int, int] | None = None
    label_table: Callable[..., LabelTable] | None = None
    validation_split: str | None = None
    groups: str | None = None

    @property
    def count_option(self) -> str | None:
        """The reader option that sets the number of images (:data:`COUNT_OPTIONS`), or ``None`` when there is none."""
        return next((name for name in COUNT_OPTIONS if name in self.options), None)

    def image_count(self, given: int | None, *, held_out: bool = False) -> int | None:
        """How many images of the training (or, ``held_out``, the evaluation) split a command reads.

        ``given`` when a count is given, else the spec's default (:attr:`lengths`);
        ``None`` means every image of the split.
        """
        if given is not None or self.lengths is None:
            return given
        return self.lengths[1 if held_out else 0]

    def read_label_table(self, csv: str | Path | None = None, **options: Any) -> LabelTable:
        """The data set's label table (:attr:`label_table`; ``options`` such as ``views``); a :class:`UserError`
        when it has none."""
        if self.label_table is None:
            raise UserError(f"{self.name} has no label table of finding vectors")
        return self.label_table(csv, **options)

    def count_options(self, count: int | None) -> dict[str, int]:
        """The reader options that build the data set with ``count`` images (``None``: no option, its own size).

        ``{"length": count}`` for a generated data set (exactly ``count``
        images), ``{"max_samples": count}`` for a read one (a seeded subset of
        at most ``count``). A data set without either option (a synthetic
        store) cannot be cut: a :class:`UserError`; a command that cuts any
        data set itself checks :attr:`count_option` first.
        """
        if count is None:
            return {}
        if self.count_option is None:
            raise UserError(f"{self.name} takes no image count; it is read whole")
        return {self.count_option: count}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """A :class:`UserError` naming the accepted options when ``options`` holds any other name."""
        unknown = [name for name in options if name not in self.options]
        if unknown:
            accepted = ", ".join(self.options) if self.options else "none"
            raise UserError(f"{self.name} does not take the options {', '.join(unknown)}; accepted: {accepted}")

    def resolve_root(self, root: str | Path | None) -> Path | str | None:
        """The data root from the argument or the environment; checks that a local one exists.

        An fsspec URL (``scheme://...``) is passed on unchanged for the reader to open.
        A data set that needs no files (``env_var`` is ``None``) refuses a root.
        """
        if self.env_var is None:
            if root is not None:
                raise DataRoleError(f"{self.name} needs no files, so it takes no data root ({OPTION} {root})")
            return None
        value = root if root is not None else os.environ.get(self.env_var)
        if value is None or str(value) == "":
            raise DataRoleError(
                f"{self.name}: no data root given; pass {OPTION} or set {self.env_var} "
                f"to a folder with the layout {self.layout}"
            )
        if "://" in str(value):
            return str(value)
        path = Path(value).expanduser()
        if not path.is_dir():
            raise DataRoleError(
                f"{self.name}: data root {path} is not a folder; expected the layout {self.layout} "
                f"({OPTION} or {self.env_var})"
            )
        return path
