"""How one named data set is built: :class:`DataSetSpec`, the entry type of :mod:`datasets.registry`.

Reader modules each define their spec (``SPEC``) here-typed; the registry is
the one table that names them.
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
