"""What a runs folder holds: the folders directly inside it, each told apart by what it contains.

* a store: a ``*.zarr`` folder that opens as a synthetic store (its root
  attributes are its provenance); its contact sheet is ``<name>-contact.png``
  beside it, its quality reports the folder ``<name>.zarr.quality`` (the
  default of ``evaluate.synthetic``) and any quality folder naming it;
* a quality report: a folder with ``quality.json`` (``evaluate.synthetic``);
* a run: a folder with ``config.json``, its kind from the record's key
  (:data:`KINDS`: ``adapt`` an adaptation cell, ``curriculum`` a curriculum
  run, ``finetune`` a downstream run, ``network`` + ``training`` a GAN run);
  shown when finished: it holds ``results.json`` (a GAN run: a snapshot);
* anything else is listed with what it is or why it cannot be read: shared
  pretext steps, a store that does not open, a damaged JSON file, a folder
  that is not a run.

Nothing here writes, trains or imports a pillar: only files are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets.synthetic_store.reader import open_synthetic
from plumbing.errors import UserError
from plumbing.run_folders import CONFIG_FILE, RESULTS_FILE, read_json_object

KINDS = {"adapt": "adaptation", "curriculum": "curriculum", "finetune": "finetune", "network": "gan"}
"""The key of a run's ``config.json`` that tells its kind (checked in this order)."""
QUALITY_FILE = "quality.json"
STEP_FILE = "step.json"


@dataclass(frozen=True)
class Store:
    path: Path
    attrs: dict[str, Any]
    contact_sheet: Path | None
    qualities: tuple[Path, ...]
    """The folders of the store's quality reports (one per reference it was measured against)."""


@dataclass(frozen=True)
class Run:
    path: Path
    kind: str
    config: dict[str, Any]
    results: dict[str, Any] | None
    """``results.json``; ``None`` for GAN runs, which write snapshots instead."""

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

    def of_kind(self, kind: str) -> list[Run]:
        """The runs of ``kind`` (every one finished: with ``results.json``, a GAN run with a snapshot)."""
        return [r for r in self.runs if r.kind == kind]


def snapshots(folder: Path) -> list[Path]:
    """A GAN run's sample grids (``samples/grid-<kimg>kimg.png``), oldest first."""
    return sorted((folder / "samples").glob("grid-*.png"))


def _run(folder: Path) -> Run | Other:
    config = read_json_object(folder / CONFIG_FILE)
    kind = next((k for key, k in KINDS.items() if key in config), None)
    if kind is None:
        return Other(folder, f"a run folder of an unknown program (config.json keys: {', '.join(sorted(config))})")
    if kind == "gan":
        if not snapshots(folder):
            return Other(folder, "a GAN run without a snapshot yet (samples/grid-*.png)")
        return Run(folder, kind, config, None)
    if not (folder / RESULTS_FILE).is_file():
        return Other(folder, f"an unfinished {kind} run (no results.json yet): run its command again to finish it")
    return Run(folder, kind, config, read_json_object(folder / RESULTS_FILE))


@dataclass(frozen=True)
class _Quality:
    path: Path
    store: Path
    """The store it measured (:func:`_measured_store`)."""


def _look(folder: Path) -> Store | Run | Other | _Quality:
    if folder.name.endswith(".zarr"):
        store = open_synthetic(folder, check=False)
        contact = folder.with_name(folder.name.removesuffix(".zarr") + "-contact.png")
        return Store(folder, store.attrs.to_dict(), contact if contact.is_file() else None, ())
    if (folder / QUALITY_FILE).is_file():
        return _Quality(folder, _measured_store(folder, read_json_object(folder / QUALITY_FILE)))
    if (folder / CONFIG_FILE).is_file():
        return _run(folder)
    steps = list(folder.glob(f"*/{STEP_FILE}"))
    if steps:
        return Other(folder, f"{len(steps)} shared pretext step(s) of curriculum runs, shown with the runs")
    nested = list(folder.glob(f"*/{CONFIG_FILE}"))
    if nested:
        return Other(folder, f"a runs folder of its own ({len(nested)} run folder(s)): python -m evaluate.report "
                             f"{folder} shows it")
    return Other(folder, "not a run folder (no config.json, results.json, quality.json or store)")


def survey(runs_dir: Path, skip: Path | None = None) -> Survey:
    """Every folder directly inside ``runs_dir`` but hidden ones and the one that holds ``skip`` (the report's own
    folder), sorted by name."""
    found = Survey(runs_dir)
    qualities: list[_Quality] = []
    skipped = skip.resolve() if skip is not None else None
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                         and not (skipped is not None and skipped.is_relative_to(p.resolve()))):
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
        mine = tuple(q.path for q in qualities if q.store == store.path.resolve())
        found.stores[i] = Store(store.path, store.attrs, store.contact_sheet, mine)
    shown = {q for store in found.stores for q in store.qualities}
    found.qualities = [q.path for q in qualities if q.path not in shown]
    return found


def _measured_store(folder: Path, figures: dict[str, Any]) -> Path:
    """The store the quality report in ``folder`` (its ``figures``) measured: its ``store`` figure where that path
    exists (as given, or a folder of that name beside the report), else the report's folder name without
    ``.quality``."""
    given = figures.get("store")
    if isinstance(given, str) and "://" not in given:
        path = Path(given)
        if path.is_absolute() and path.exists():
            return path.resolve()
        if (folder.parent / path.name).exists():
            return (folder.parent / path.name).resolve()
    return folder.with_name(folder.name.removesuffix(".quality")).resolve()
