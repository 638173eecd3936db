"""The adaptation and curriculum pages: the pillars' tables, then one section per run with its pictures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluate import plots
from evaluate.study.assets import Assets
from evaluate.study.html import Raw, anchor, esc, figure, link, table
from evaluate.study.survey import Run
from evaluate.study.tables import PillarTable
from plumbing.errors import UserError
from plumbing.run_folders import RESULTS_FILE, read_json_object

ADAPT_SETTINGS = ("target", "source", "task", "backbone", "image_size", "steps", "init", "target_prior",
                  "alignment")
ADAPT_HEADERS = ("target", "source", "task", "backbone", "px", "steps", "backbone start", "target prior", "alignment")
CURRICULUM_COLUMNS = (("ordering", "ordering"), ("label", "label"), ("knn", "k-NN"), ("linear", "linear probe"),
                      ("balanced_accuracy", "fine-tune"), ("delta", "delta vs first task"), ("ail", "AIL"),
                      ("beats_imagenet", "> ImageNet"), ("beats_scratch", "> scratch"), ("seeds", "seeds"))


def _mean_std(mean: float | None, std: float | None) -> str | None:
    return None if mean is None else f"{mean:.4f} +- {std or 0.0:.4f}"


def _failed(pillar: PillarTable) -> str:
    return (f'<p class="flag">The table could not be computed: {esc(pillar.error)}</p>'
            f"<p>Command: <code>{esc(pillar.command)}</code></p>\n")


def _gaps(rows: Sequence[Mapping[str, Any]], settings: Sequence[str], caption: str) -> str:
    if not rows:
        return "<p>No run records a history with target labels: no criterion can be compared with the oracle.</p>\n"
    return table([*(ADAPT_HEADERS[ADAPT_SETTINGS.index(k)] for k in settings), "criterion", "mean gap", "worst gap",
                  "runs"],
                 [[*(r[k] for k in settings), r["criterion"], r["mean_gap"], r["worst_gap"], r["runs"]] for r in rows],
                 caption)


def adaptation_tables(pillar: PillarTable) -> str:
    """The seed's Tables 4-6 form: balanced accuracy per setting (mean +- std over seeds, collapse flags), then
    the selection tables."""
    if pillar.tables is None:
        return _failed(pillar)
    data = pillar.tables
    rows = [[*(r[k] for k in ADAPT_SETTINGS), _mean_std(r["balanced_accuracy"], r["std"]),
             ", ".join(map(str, r["seeds"])),
             Raw(f'<span class="flag">yes ({r["collapsed"]}/{len(r["seeds"])})</span>') if r["collapsed"] else "no"]
            for r in data["rows"]]
    groups = {tuple(r[k] for k in ADAPT_SETTINGS if k != "alignment") for r in data["selection_groups"]}
    return (table([*ADAPT_HEADERS, "balanced accuracy", "seeds", "collapsed"], rows,
                  f"Balanced accuracy on the target evaluation set ({data['figure']} figure), mean +- std over seeds")
            + _gaps(data["selection"], (), "Selection table: the oracle's balanced accuracy minus that of each "
                    "label-free criterion's choice, best first")
            + (_gaps(data["selection_groups"], [k for k in ADAPT_SETTINGS if k != "alignment"],
                     "Selection table per group of runs") if len(groups) > 1 else "")
            + f'<p class="muted">Computed by <code>{esc(pillar.command)}</code>.</p>\n')


def _prior_rows(results: Mapping[str, Any]) -> list[list[Any]]:
    classes = results["classes"]
    truth = (results.get("target_prior") or {}).get("true")
    rows = [[name, *(None if v is None else float(v) for v in values)]
            for name, values in (results.get("prior_estimates") or {}).items() if values is not None]
    if truth is not None:
        rows.append(["true (target labels)", *map(float, truth)])
    return [r for r in rows if len(r) == len(classes) + 1]


def adaptation_run(run: Run, assets: Assets) -> str:
    """One adaptation cell: its curves, confusion matrix, figures by criterion, prior estimates."""
    results = run.results or {}
    parts = [f'<h3 id="{anchor(run.name)}">{esc(run.name)}</h3>',
             f"<p>{esc(results.get('alignment'))}, seed {esc(results.get('seed'))}: "
             f"{esc(results.get('source'))} &rarr; {esc(results.get('target'))}, {esc(results.get('steps'))} steps; "
             + ('<span class="flag">collapsed</span>; ' if results.get("collapsed") else "")
             + link(f"runs.html#{anchor(run.name)}", "configuration and command") + "</p>"]
    curves = assets.reuse_or_draw(run.path / plots.ADAPTATION_CURVES, run.name,
                                  lambda: plots.adaptation_curves(results["history"], run.name))
    parts.append(figure(curves, "balanced accuracy over the steps (target evaluation and source validation)"))
    if results.get("confusion_matrix") is not None:
        confusion = assets.reuse_or_draw(run.path / plots.CONFUSION, run.name, lambda: plots.confusion_picture(
            results["confusion_matrix"], results["classes"], f"{run.name}: final step"))
        parts.append(figure(confusion, "confusion matrix of the final step (rows true, columns predicted)"))
    chosen = results.get("figures") or {}
    criteria = results.get("figure_criteria") or {}
    parts.append(table(["figure", "chosen by", "step", "balanced accuracy", "source validation", "collapsed"],
                       [[name, criteria.get(name), f.get("step"), f.get("balanced_accuracy"),
                         f.get("source_validation_balanced_accuracy"), "yes" if f.get("collapsed") else "no"]
                        for name, f in chosen.items()], "The evaluation each criterion chose"))
    priors = _prior_rows(results)
    if priors:
        parts.append(table(["class prior of the target", *results["classes"]], priors,
                           "Prior estimates at the final step"))
    return "\n".join([*parts, attention(run.path, run.name, assets)])


def curriculum_tables(pillar: PillarTable) -> str:
    """The seed's Tables 1 and 2 form, one table per downstream task and settings group."""
    if pillar.tables is None:
        return _failed(pillar)
    parts = []
    for group, rows in pillar.tables.items():
        parts.append(table(
            [title for _, title in CURRICULUM_COLUMNS],
            [[r["ordering"], r["label"], _mean_std(r["knn"], r["knn_std"]), _mean_std(r["linear"], r["linear_std"]),
              _mean_std(r["balanced_accuracy"], r["std"]), None if r["delta"] is None else f"{r['delta']:+.4f}",
              _mean_std(r["ail"], r["ail_std"]), r["beats_imagenet"], r["beats_scratch"],
              ", ".join(map(str, r["seeds"]))] for r in rows],
            f"Downstream {group}: balanced accuracy (mean +- std over seeds) and AIL"))
    return "".join(parts) + f'<p class="muted">Computed by <code>{esc(pillar.command)}</code>.</p>\n'


def _downstream(run: Run, assets: Assets) -> list[str]:
    folder = run.path / "downstream"
    parts = []
    try:
        details = read_json_object(folder / RESULTS_FILE)
    except UserError as exc:
        return [f'<p class="flag">downstream/{esc(exc)}</p>']
    if details.get("confusion_matrix") is not None:
        confusion = assets.reuse_or_draw(folder / plots.CONFUSION, f"{run.name}/downstream", lambda: (
            plots.confusion_picture(details["confusion_matrix"], details["classes"], f"{run.name}: fine-tune")))
        parts.append(figure(confusion, "downstream fine-tune: confusion matrix (rows true, columns predicted)"))
    return [*parts, attention(folder, f"{run.name}/downstream", assets)]


def attention(folder: Path, asset_folder: str, assets: Assets) -> str:
    """The attention report a run folder holds (``attention.md`` of ``evaluate.attention`` or of a curriculum's
    downstream run, with its overlay), or nothing."""
    document = folder / "attention.md"
    return assets.markdown_page(document, asset_folder, shift=3) if document.is_file() else ""


def curriculum_run(run: Run, assets: Assets) -> str:
    """One curriculum run: its steps' pretext curves, the downstream confusion matrix and attention maps."""
    results = run.results or {}
    downstream = results.get("downstream", {})
    parts = [f'<h3 id="{anchor(run.name)}">{esc(run.name)}</h3>',
             f"<p>{esc(results.get('ordering'))} from {esc(results.get('init'))}, seed {esc(results.get('seed'))}; "
             f"downstream {esc(results.get('downstream_task'))}: fine-tune balanced accuracy "
             f"{downstream['balanced_accuracy']:.4f}; "
             + link(f"runs.html#{anchor(run.name)}", "configuration and command") + "</p>"]
    steps = results.get("steps") or []
    if steps:
        curves = assets.reuse_or_draw(run.path / plots.PRETEXT_CURVES, run.name,
                                      lambda: plots.pretext_curves(steps, run.name))
        parts.append(figure(curves, "pretext loss and monitor k-NN per epoch of each step"))
        parts.append(table(["step", "lr", "loss, first -> last epoch", "monitor k-NN, start -> last epoch"],
                           [[s.get("task"), json.dumps((s.get("lr") or {}).get("lr")), _arrow(s.get("epoch_losses")),
                             _arrow(s.get("epoch_knn"), s.get("knn_start"))] for s in steps]))
    return "\n".join(parts + _downstream(run, assets))


def _arrow(values: Sequence[float] | None, start: float | None = None) -> str | None:
    if not values:
        return None
    first = values[0] if start is None else start
    return f"{first:.3f} -> {values[-1]:.3f}"
