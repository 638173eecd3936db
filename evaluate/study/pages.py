"""The store, GAN, runs and overview pages of the study report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evaluate import plots
from evaluate.study.assets import Assets
from evaluate.study.html import Raw, anchor, esc, figure, guarded, link, table
from evaluate.study.survey import QUALITY_FILE, Run, Store, Survey, snapshots

GRIDS_SHOWN = 6
"""Sample grids shown per GAN run: evenly spaced over its snapshots, the first and the last among them."""


def _provenance_rows(attrs: Mapping[str, Any]) -> list[list[Any]]:
    generator = attrs.get("generator") or {}
    training = generator.get("training") or {}
    counts = attrs.get("counts") or {}
    rows = [
        ["task", f"v{attrs.get('version')}-{attrs.get('setting')}"],
        ["classes", ", ".join(attrs.get("classes") or [])],
        *[[f"images ({split})", ", ".join(f"{c} {n}" for c, n in per_class.items())]
          for split, per_class in counts.items()],
        ["resolution", f"{attrs.get('resolution')} px"],
        ["generator sha256", generator.get("sha256")],
        ["generator trained on", f"{training.get('data', '-')} ({training.get('kimg_done', '-')} kimg)"],
        ["trained on phantoms", generator.get("trained_on_phantoms")],
        ["seed, truncation", f"{attrs.get('seed')}, {attrs.get('truncation')}"],
        ["condition policy", attrs.get("condition_policy")],
        ["created", attrs.get("created")],
        ["complete", attrs.get("complete")],
        ["libraries", ", ".join(f"{k} {v}" for k, v in (attrs.get("library_versions") or {}).items())],
    ]
    return [[k, None if v is None else str(v)] for k, v in rows]


def _quality(folder: Path, assets: Assets) -> str:
    report = folder / "quality.md"
    if not report.is_file():
        return f'<p class="flag">{esc(folder.name)} holds {QUALITY_FILE} but no quality.md.</p>'
    return assets.markdown_page(report, folder.name, shift=2)


def stores_page(found: Survey, assets: Assets) -> str:
    """Each store: provenance, contact sheet (one row per class), quality report; then lone quality reports."""
    if not found.stores and not found.qualities:
        return "<p>No synthetic store in this runs folder (<code>python -m synth.generate</code> writes one).</p>"
    parts = []
    for store in found.stores:
        parts.append(_store(store, assets))
    for folder in found.qualities:
        parts.append(f'<h2 id="{anchor(folder.name)}">{esc(folder.name)}</h2>'
                     "<p>A quality report of a store that is not in this runs folder.</p>" + _quality(folder, assets))
    return "\n".join(parts)


def _store(store: Store, assets: Assets) -> str:
    parts = [f'<h2 id="{anchor(store.path.name)}">{esc(store.path.name)}</h2>',
             table(["provenance", ""], _provenance_rows(store.attrs))]
    if store.contact_sheet is not None:
        parts.append(figure(assets.copy(store.contact_sheet, store.path.name),
                            "contact sheet: the first validation images of each class, one row per class"))
    for quality in store.qualities:
        parts.append(_quality(quality, assets))
    if not store.qualities:
        parts.append(f"<p>No quality report yet: <code>python -m evaluate.synthetic {esc(store.path)} --reference "
                     "DATASET</code> writes one.</p>")
    return "\n".join(parts)


def _fidelity(run: Run) -> list[dict[str, Any]]:
    """The run's label fidelity records; a line a killed run left half-written is left out."""
    path = run.path / "samples" / "label_fidelity.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _gan_run(run: Run, assets: Assets) -> str:
    parts = [f'<h2 id="{anchor(run.name)}">{esc(run.name)}</h2><p>'
             + link(f"runs.html#{anchor(run.name)}", "configuration and command") + "</p>"]
    records = _fidelity(run)
    if records:
        parts.append(figure(assets.draw(plots.fidelity_curves(records, run.name), run.name, "fidelity.png"),
                            "label fidelity per class over training (the probe's agreement with the asked class)"))
    grids = snapshots(run.path)
    for i in sorted({round(x) for x in np.linspace(0, len(grids) - 1, min(len(grids), GRIDS_SHOWN))}):
        kimg = grids[i].stem.removeprefix("grid-").removesuffix("kimg")
        parts.append(figure(assets.copy(grids[i], run.name), f"samples at {float(kimg):g} kimg (rows: conditions)",
                            360))
    return "\n".join(parts)


def gan_page(found: Survey, assets: Assets) -> str:
    """Each GAN run: label fidelity over training and sample grids over training."""
    runs = found.of_kind("gan")
    if not runs:
        return "<p>No GAN run in this runs folder (<code>python -m synth.train</code> trains one).</p>"
    return "\n".join(guarded(run.name, lambda run=run: _gan_run(run, assets)) for run in runs)


def runs_page(found: Survey) -> str:
    """Every run: its kind, the exact command (and resume commands) and its recorded configuration."""
    if not found.runs:
        return "<p>No run folder here.</p>"
    parts = []
    for run in found.runs:
        config = dict(run.config)
        command = config.pop("command", None)
        resumed = config.pop("resumed_with", [])
        commands = [command, *resumed] if command else list(resumed)
        parts.append(f'<h3 id="{anchor(run.name)}">{esc(run.name)}</h3><p>{esc(run.kind)} run</p>'
                     + "".join(f"<pre>{esc(c)}</pre>" for c in commands)
                     + f"<details><summary>configuration</summary><pre>{esc(json.dumps(config, indent=2))}</pre>"
                       "</details>")
    return "\n".join(parts)


def overview(found: Survey) -> str:
    """What the runs folder holds, with links to the pages, and every folder that is not shown and why."""
    counts = [("synthetic stores", len(found.stores), "stores.html"),
              ("quality reports", sum(len(s.qualities) for s in found.stores) + len(found.qualities),
               "stores.html"),
              ("adaptation runs", len(found.of_kind("adaptation")), "adaptation.html"),
              ("curriculum runs", len(found.of_kind("curriculum")), "curricula.html"),
              ("GAN runs", len(found.of_kind("gan")), "gan.html"),
              ("downstream (fine-tune) runs", len(found.of_kind("finetune")), "runs.html")]
    parts = [f"<p>Runs folder <code>{esc(found.runs_dir.resolve())}</code>. Every page is built from what its "
             "run folders hold; nothing is trained again. Run the same command again to update it.</p>",
             table(["what", "found", "page"], [[what, n, Raw(link(href, href))] for what, n, href in counts])]
    if found.others:
        parts.append(table(["folder", "what it is"], [[o.path.name, o.what] for o in found.others],
                           "Folders not shown on the pages"))
    return "\n".join(parts)
