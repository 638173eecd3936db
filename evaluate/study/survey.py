"""What a runs folder holds: the folders directly inside it, each told apart by what it contains.

* a store: a ``*.zarr`` folder that opens as a synthetic store (its root
  attributes are its provenance); its contact sheet is ``<name>-contact.png``
  beside it, its quality report the folder ``<name>.zarr.quality`` (the
  default of ``evaluate.synthetic``) or any quality folder naming it;
* a quality report: a folder with ``quality.json`` (``evaluate.synthetic``);
* a run: a folder with ``config.json``, its kind from the record's key
  (:data:`KINDS`: ``adapt`` an adaptation cell, ``curriculum`` a curriculum
  run, ``finetune`` a downstream run, ``network`` + ``training`` a GAN run);
  finished when it holds ``results.json`` (a GAN run: its snapshots);
* anything else is listed with what it is or why it cannot be read: shared
  pretext steps, a store that does not open, a damaged JSON file, a folder
  that is not a run.

Nothing here writes, trains or imports a pillar: only files are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets.synthetic_store.reader import open_synthetic
from plumbing.errors import UserError
from plumbing.run_folders import CONFIG_FILE, RESULTS_FILE

KINDS = {"adapt": "adaptation", "curriculum": "curriculum", "finetune": "finetune", "network": "gan"}
"""The key of a run's ``config.json`` that tells its kind (checked in this order)."""
QUALITY_FILE = "quality.json"
STEP_FILE = "step.json"


@dataclass(frozen=True)
class Store:
    path: Path
    attrs: dict[str, Any]
    contact_sheet: Path | None
    quality: Path | None
    """The folder of the store's quality report, when there is one."""


@dataclass(frozen=True)
class Run:
    path: Path
    kind: str
    config: dict[str, Any]
    results: dict[str, Any] | None
    """``results.json``; ``None`` while the run is unfinished (and for GAN runs, which write snapshots)."""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Other:
    path: Path
    what: str


@dataclass
class Survey:
    runs_dir: Path
    stores: list[Store] = field(default_factory=list)
    qualities: list[Path] = field(default_factory=list)
    """Quality folders that belong to no store in the runs folder."""
    runs: list[Run] = field(default_factory=list)
    others: list[Other] = field(default_factory=list)

    def of_kind(self, kind: str, finished: bool = True) -> list[Run]:
        """The runs of ``kind``; only those with ``results.json`` when ``finished`` (GAN runs: those with a
        snapshot)."""
        return [r for r in self.runs if r.kind == kind and (not finished or r.results is not None
                                                             or (kind == "gan" and _snapshots(r.path)))]


def json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`UserError` saying why it cannot be read otherwise."""
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(f"{path.name} is not valid JSON ({exc}); a write was interrupted?") from None
    if not isinstance(value, dict):
        raise UserError(f"{path.name} holds no JSON object")
    return value


def _snapshots(folder: Path) -> list[Path]:
    return sorted((folder / "samples").glob("grid-*.png"))


def _run(folder: Path) -> Run | Other:
    config = json_object(folder / CONFIG_FILE)
    kind = next((k for key, k in KINDS.items() if key in config), None)
    if kind is None:
        return Other(folder, f"a run folder of an unknown program (config.json keys: {', '.join(sorted(config))})")
    results = json_object(folder / RESULTS_FILE) if (folder / RESULTS_FILE).is_file() else None
    if results is None and kind != "gan":
        return Other(folder, f"an unfinished {kind} run (no results.json yet): run its command again to finish it")
    return Run(folder, kind, config, results)


def _look(folder: Path) -> Store | Run | Other | Path:
    if folder.name.endswith(".zarr"):
        store = open_synthetic(folder, check=False)
        contact = folder.with_name(folder.name.removesuffix(".zarr") + "-contact.png")
        return Store(folder, store.attrs.to_dict(), contact if contact.is_file() else None, None)
    if (folder / QUALITY_FILE).is_file():
        json_object(folder / QUALITY_FILE)
        return folder
    if (folder / CONFIG_FILE).is_file():
        return _run(folder)
    steps = list(folder.glob(f"*/{STEP_FILE}"))
    if steps:
        return Other(folder, f"{len(steps)} shared pretext step(s) of curriculum runs, shown with the runs")
    return Other(folder, "not a run folder (no config.json, results.json, quality.json or store)")


def survey(runs_dir: Path, skip: Path | None = None) -> Survey:
    """Every folder directly inside ``runs_dir`` but ``skip`` (the report's own folder) and hidden ones, sorted by
    name."""
    found = Survey(runs_dir)
    qualities: list[Path] = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and p != skip and not p.name.startswith(".")):
        try:
            item = _look(folder)
        except UserError as exc:
            item = Other(folder, f"cannot be read: {exc}")
        if isinstance(item, Store):
            found.stores.append(item)
        elif isinstance(item, Run):
            found.runs.append(item)
        elif isinstance(item, Other):
            found.others.append(item)
        else:
            qualities.append(item)
    for i, store in enumerate(found.stores):
        match = next((q for q in qualities if _quality_of(q) == store.path.resolve()), None)
        if match is not None:
            qualities.remove(match)
            found.stores[i] = Store(store.path, store.attrs, store.contact_sheet, match)
    found.qualities = qualities
    return found


def _quality_of(folder: Path) -> Path | None:
    """The store a quality report measured (its ``store`` figure, relative to the runs folder's parent when it
    is not absolute; the report's folder name ``<store>.quality`` otherwise)."""
    figures = json_object(folder / QUALITY_FILE)
    given = figures.get("store")
    if isinstance(given, str) and "://" not in given:
        path = Path(given)
        if path.is_absolute() and path.exists():
            return path.resolve()
        if (folder.parent / path.name).exists():
            return (folder.parent / path.name).resolve()
    return folder.with_name(folder.name.removesuffix(".quality")).resolve()
