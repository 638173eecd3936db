"""The report's pictures: copies of what the run folders hold, and plots drawn for what they lack.

Every picture lives under ``<report>/assets/<folder>/``, so the report folder
alone can be moved, shared or archived and still shows everything.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from evaluate.plots import save
from evaluate.study.html import markdown

ASSETS = "assets"


@dataclass(frozen=True)
class Assets:
    out: Path
    """The report folder being written."""

    def _target(self, folder: str, name: str) -> tuple[Path, str]:
        relative = f"{ASSETS}/{folder}/{name}"
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, relative

    def copy(self, source: Path, folder: str, name: str | None = None) -> str:
        """``source`` copied under ``assets/<folder>/``; its path relative to the report's pages."""
        path, relative = self._target(folder, name or source.name)
        shutil.copyfile(source, path)
        return relative

    def reuse_or_draw(self, source: Path, folder: str, draw: Callable[[], Figure]) -> str:
        """The run folder's picture ``source`` when it has one, else ``draw()``'s figure under its name."""
        if source.is_file():
            return self.copy(source, folder)
        return self.draw(draw(), folder, source.name)

    def markdown_page(self, document: Path, folder: str, shift: int) -> str:
        """A run folder's Markdown report ``document`` as HTML (:func:`evaluate.study.html.markdown`), the pictures
        it shows (files beside it, never a path out of its folder) copied under ``assets/<folder>/``."""
        def source(name: str) -> str | None:
            picture = document.parent / Path(name).name
            return self.copy(picture, folder) if picture.is_file() else None

        return markdown(document.read_text(), source, shift=shift)

    def draw(self, figure: Figure, folder: str, name: str) -> str:
        """``figure`` as a PNG under ``assets/<folder>/<name>``; its relative path."""
        path, relative = self._target(folder, name)
        save(figure, path)
        return relative
