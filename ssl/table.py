"""The runs table of curricular pre-training (the seed's Tables 1 and 2) and the plan of orderings to run.

Runs are compared only within one downstream task and one set of settings
(everything of :class:`ssl.config.CurriculumConfig` but the tasks, their
setting overrides, the initialisation and the seed). One row per ordering
(:func:`row_name`: with its tasks' overrides, if any; a run kept under two
prefixes counts once): the downstream balanced accuracy of the k-NN probe,
the linear probe and the fine-tune (:data:`FIGURES`) and AIL, as mean +-
sample standard deviation over seeds (a run finished before the probes
existed has none: ``-``), and, by one of the three figures (``label_by``,
the fine-tune's by default, as the seed):

- the label (:func:`curriculum_label`): for an ordering of two tasks or
  more, ``C`` (Curriculum) when the single tasks' mean downstream balanced
  accuracies increase along it, ``AC`` (Anti-Curriculum) when they decrease,
  ``MC`` (Mixed) otherwise, ``?`` when a single task has no finished run;
  ``-`` for single tasks and baselines. A task alone is its single-task run
  with the same start (scratch or ImageNet) and the same settings
  (:func:`single_key`);
- ``delta``: its mean balanced accuracy minus that of its first task alone;
- ``> imagenet`` / ``> scratch``: whether its mean beats the ImageNet and
  the scratch (``none``) baselines' (``?`` without that baseline).

Rows are sorted best first. :func:`plan` proposes the orderings of 2 to
``max_length`` tasks over the tasks with single-task results, Curriculum
orderings first, then Mixed, then Anti-Curriculum.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import statistics
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from plumbing.run_folders import read_run_results
from ssl.curriculum_run import complete_results, downstream_label

from .config import CurriculumConfig

UNGROUPED = ("tasks", "init", "seed", "overrides")
DOWNSTREAM_UNGROUPED = ("init", "seed")
"""The downstream protocol starts from the run's own backbone file with the run's seed."""
FIGURES = ("finetune", "knn", "linear")
"""The downstream balanced accuracies of a run: the fine-tune's, and the k-NN and linear probes' of its backbone."""
FIGURE_NAMES = {"finetune": "fine-tune", "knn": "k-NN", "linear": "linear probe"}
COLUMNS = ("ordering", "label", "knn", "knn_std", "linear", "linear_std", "balanced_accuracy", "std", "delta", "ail",
           "ail_std", "beats_imagenet", "beats_scratch", "seeds")


def curriculum_label(tasks: Sequence[Hashable], singles: Mapping[Hashable, float]) -> str:
    """``C``, ``AC``, ``MC``, ``?`` or ``-`` for an ordering of ``tasks`` given single-task accuracies."""
    if len(tasks) < 2:
        return "-"
    if any(t not in singles for t in tasks):
        return "?"
    values = [singles[t] for t in tasks]
    steps = [b - a for a, b in itertools.pairwise(values)]
    if all(s > 0 for s in steps):
        return "C"
    if all(s < 0 for s in steps):
        return "AC"
    return "MC"


def read_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """The ``results.json`` of every finished curriculum run directly inside ``runs_dir``; a damaged one of a
    curriculum run (or one whose program cannot be told) is one :class:`UserError` naming it."""
    return read_run_results(runs_dir, lambda results: "ordering" in results and "downstream" in results,
                            "curriculum", complete_results)


def settings_group(run: Mapping[str, Any]) -> str:
    """The downstream task and a short hash of every setting but the tasks, their overrides, the start and the seed."""
    shared = {k: v for k, v in run["settings"].items() if k not in UNGROUPED}
    shared["downstream"] = {k: v for k, v in shared["downstream"].items() if k not in DOWNSTREAM_UNGROUPED}
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    pretext = run["image_size"]
    downstream = run["settings"]["downstream"].get("image_size", pretext)
    size = f"{pretext} px" if pretext == downstream else f"pretext {pretext} px, downstream {downstream} px"
    return f"{run['downstream_task']} ({run['backbone']}, {size}, settings {digest})"


def config_group(cfg: CurriculumConfig) -> str:
    """The settings group that the runs of ``cfg`` fall into (as :func:`settings_group` of their results)."""
    return settings_group({"settings": cfg.to_dict(), "downstream_task": downstream_label(cfg),
                           "backbone": cfg.backbone, "image_size": cfg.image_size})


def single_key(run: Mapping[str, Any], task: str) -> tuple[str, str, str]:
    """What a task alone means for ``run``: the task, its setting overrides in the run, the run's start."""
    overrides = run["settings"].get("overrides", {}).get(task, {})
    return task, json.dumps(overrides, sort_keys=True), run["init"]


def figure(run: Mapping[str, Any], by: str) -> float | None:
    """The run's downstream balanced accuracy by ``by`` (:data:`FIGURES`); ``None`` for a probe it lacks."""
    downstream = run["downstream"]
    if by == "finetune":
        return downstream["balanced_accuracy"]
    probe = downstream.get(by)
    return probe["balanced_accuracy"] if isinstance(probe, dict) else None


def _figures(runs: Sequence[Mapping[str, Any]], by: str) -> list[float]:
    return [v for v in (figure(r, by) for r in runs) if v is not None]


def _single_means(runs: Sequence[Mapping[str, Any]], by: str) -> dict[tuple[str, str, str], float]:
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        if len(run["tasks"]) == 1 and (value := figure(run, by)) is not None:
            values[single_key(run, run["tasks"][0])].append(value)
    return {k: statistics.fmean(v) for k, v in values.items()}


def _distinct_seeds(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One run per seed (the first by folder name): the same run kept under two prefixes counts once."""
    kept: dict[int, Mapping[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r.get("run", "")):
        kept.setdefault(run["seed"], run)
    return list(kept.values())


def _distinct_seeds_per_ordering(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    by_row: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        by_row[row_name(run)].append(run)
    return [r for rs in by_row.values() for r in _distinct_seeds(rs)]


def row_name(run: Mapping[str, Any]) -> str:
    """The run's row of the table: its ordering, with the setting overrides of its tasks when it has any."""
    overrides = run["settings"].get("overrides", {})
    given = [f"{t}.{k}={json.dumps(v)}" for t in run["tasks"] for k, v in sorted(overrides.get(t, {}).items())]
    return run["ordering"] + (f" [{', '.join(given)}]" if given else "")


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _beats(value: float | None, baseline: float | None) -> str:
    return "?" if value is None or baseline is None else ("yes" if value > baseline else "no")


def table(runs: Sequence[Mapping[str, Any]], label_by: str = "finetune") -> dict[str, list[dict[str, Any]]]:
    """The rows of every settings group (module docstring), best first by ``label_by``'s figure."""
    groups: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[settings_group(run)][row_name(run)].append(run)
    tables = {}
    for group, orderings in sorted(groups.items()):
        orderings = {o: _distinct_seeds(rs) for o, rs in orderings.items()}
        means = {o: _mean_std(_figures(rs, label_by))[0] for o, rs in orderings.items()}
        singles = _single_means([r for rs in orderings.values() for r in rs], label_by)
        rows = []
        for ordering, members in orderings.items():
            keys = [single_key(members[0], t) for t in members[0]["tasks"]]
            knn, knn_std = _mean_std(_figures(members, "knn"))
            linear, linear_std = _mean_std(_figures(members, "linear"))
            mean, std = _mean_std(_figures(members, "finetune"))
            ail, ail_std = _mean_std([m["downstream"]["ail"] for m in members if m["downstream"]["ail"] is not None])
            first = singles.get(keys[0]) if len(keys) > 1 else None
            by = means[ordering]
            rows.append({
                "ordering": ordering, "label": curriculum_label(keys, singles), "knn": knn, "knn_std": knn_std,
                "linear": linear, "linear_std": linear_std, "balanced_accuracy": mean, "std": std,
                "delta": None if first is None or by is None else by - first, "ail": ail, "ail_std": ail_std,
                "beats_imagenet": "-" if ordering == "imagenet" else _beats(by, means.get("imagenet")),
                "beats_scratch": "-" if ordering == "none" else _beats(by, means.get("none")),
                "seeds": sorted(m["seed"] for m in members),
            })
        tables[group] = sorted(rows, key=lambda r: (-(means[r["ordering"]] or -1.0), r["ordering"]))
    return tables


def plan(
    runs: Sequence[Mapping[str, Any]], tasks: Sequence[str], max_length: int, init: str = "scratch",
    overrides: Mapping[str, Mapping[str, Any]] | None = None, label_by: str = "finetune",
) -> list[tuple[str, str]]:
    """``(ordering, label)`` of every ordering of 2..``max_length`` of ``tasks``: C first, then MC, then AC.

    ``runs`` are those of one settings group (:func:`settings_group`). The
    single-task accuracies (by ``label_by``'s figure) are the means over their single-task runs that
    start from ``init`` with each task's ``overrides``; orderings with a task
    lacking one are labelled ``?`` and come last.
    """
    singles = _single_means(_distinct_seeds_per_ordering(runs), label_by)
    keys = {t: (t, json.dumps((overrides or {}).get(t, {}), sort_keys=True), init) for t in tasks}
    proposals = [
        (",".join(order), curriculum_label([keys[t] for t in order], singles))
        for length in range(2, max_length + 1) for order in itertools.permutations(tasks, length)
    ]
    rank = {"C": 0, "MC": 1, "AC": 2, "?": 3}
    return sorted(proposals, key=lambda p: rank[p[1]])


def _fmt(value: float | None, std: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return text if std is None else f"{text} +- {std:.4f}"


def render(tables: Mapping[str, Sequence[Mapping[str, Any]]], fmt: str, label_by: str = "finetune") -> str:
    """The tables as ``markdown``, ``csv`` (a ``group`` column first) or ``json``; ``label_by`` names the figure
    of the label, delta and baseline columns in the markdown title."""
    if fmt == "json":
        return json.dumps(tables, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=("group", *COLUMNS), lineterminator="\n")
        writer.writeheader()
        for group, rows in tables.items():
            for row in rows:
                writer.writerow({"group": group, **row, "seeds": " ".join(map(str, row["seeds"]))})
        return out.getvalue().rstrip("\n")
    lines = []
    for group, rows in tables.items():
        lines += [f"Downstream {group}: balanced accuracy of the k-NN probe, the linear probe and the fine-tune, "
                  f"and AIL, mean +- std over seeds; label, delta and baselines by {FIGURE_NAMES[label_by]}", "",
                  "| ordering | label | k-NN | linear | fine-tune | delta vs first task | AIL | > ImageNet | "
                  "> scratch | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['ordering']} | {r['label']} | {_fmt(r['knn'], r['knn_std'])} | "
                f"{_fmt(r['linear'], r['linear_std'])} | {_fmt(r['balanced_accuracy'], r['std'])} | "
                f"{_fmt(r['delta'], signed=True)} | {_fmt(r['ail'], r['ail_std'])} | {r['beats_imagenet']} | "
                f"{r['beats_scratch']} | {', '.join(map(str, r['seeds']))} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n")
