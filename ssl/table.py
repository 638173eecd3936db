"""The runs table of curricular pre-training (the seed's Tables 1 and 2) and the plan of orderings to run.

Runs are compared only within one downstream task and one set of settings
(everything of :class:`ssl.config.CurriculumConfig` but the tasks, the
initialisation and the seed, which the downstream protocol shares). One row per ordering: balanced accuracy and
AIL as mean +- sample standard deviation over seeds, and

- the label (:func:`curriculum_label`): for an ordering of two tasks or
  more, ``C`` (Curriculum) when the single tasks' mean downstream balanced
  accuracies increase along it, ``AC`` (Anti-Curriculum) when they decrease,
  ``MC`` (Mixed) otherwise, ``?`` when a single task has no finished run;
  ``-`` for single tasks and baselines;
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plumbing.runs import read_run_results

from .runs import RESULTS_FILE

UNGROUPED = ("tasks", "init", "seed")
DOWNSTREAM_UNGROUPED = ("init", "seed")
"""The downstream protocol starts from the run's own backbone file with the run's seed."""
COLUMNS = ("ordering", "label", "balanced_accuracy", "std", "delta", "ail", "ail_std", "beats_imagenet",
           "beats_scratch", "seeds")


def curriculum_label(tasks: Sequence[str], singles: Mapping[str, float]) -> str:
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
    """The ``results.json`` of every finished curriculum run directly inside ``runs_dir``."""
    return read_run_results(runs_dir, RESULTS_FILE, lambda results: "ordering" in results and "downstream" in results)


def settings_group(run: Mapping[str, Any]) -> str:
    """The downstream task and a short hash of every setting but the tasks, the initialisation and the seed."""
    shared = {k: v for k, v in run["settings"].items() if k not in UNGROUPED}
    shared["downstream"] = {k: v for k, v in shared["downstream"].items() if k not in DOWNSTREAM_UNGROUPED}
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    return f"{run['downstream_task']} ({run['backbone']}, {run['image_size']} px, settings {digest})"


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _beats(value: float, baseline: float | None) -> str:
    return "?" if baseline is None else ("yes" if value > baseline else "no")


def table(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of every settings group (module docstring), best first."""
    groups: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[settings_group(run)][run["ordering"]].append(run)
    tables = {}
    for group, orderings in sorted(groups.items()):
        means = {o: statistics.fmean(r["downstream"]["balanced_accuracy"] for r in rs) for o, rs in orderings.items()}
        singles = {rs[0]["tasks"][0]: means[o] for o, rs in orderings.items()
                   if len(rs[0]["tasks"]) == 1 and rs[0]["init"] == "scratch"}
        rows = []
        for ordering, members in orderings.items():
            tasks = members[0]["tasks"]
            mean, std = _mean_std([m["downstream"]["balanced_accuracy"] for m in members])
            ail, ail_std = _mean_std([m["downstream"]["ail"] for m in members if m["downstream"]["ail"] is not None])
            first = singles.get(tasks[0]) if len(tasks) > 1 else None
            rows.append({
                "ordering": ordering, "label": curriculum_label(tasks, singles), "balanced_accuracy": mean, "std": std,
                "delta": None if first is None else mean - first, "ail": ail, "ail_std": ail_std,
                "beats_imagenet": "-" if ordering == "imagenet" else _beats(mean, means.get("imagenet")),
                "beats_scratch": "-" if ordering == "none" else _beats(mean, means.get("none")),
                "seeds": sorted(m["seed"] for m in members),
            })
        tables[group] = sorted(rows, key=lambda r: (-r["balanced_accuracy"], r["ordering"]))
    return tables


def plan(runs: Sequence[Mapping[str, Any]], tasks: Sequence[str], max_length: int) -> list[tuple[str, str]]:
    """``(ordering, label)`` of every ordering of 2..``max_length`` of ``tasks``: C first, then MC, then AC.

    Single-task accuracies are the means over the finished scratch runs of
    each task (over every settings group); orderings with a task lacking
    one are labelled ``?`` and come last.
    """
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if len(run["tasks"]) == 1 and run["init"] == "scratch":
            values[run["tasks"][0]].append(run["downstream"]["balanced_accuracy"])
    singles = {t: statistics.fmean(v) for t, v in values.items()}
    proposals = [
        (",".join(order), curriculum_label(order, singles))
        for length in range(2, max_length + 1) for order in itertools.permutations(tasks, length)
    ]
    rank = {"C": 0, "MC": 1, "AC": 2, "?": 3}
    return sorted(proposals, key=lambda p: rank[p[1]])


def _fmt(value: float | None, std: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return text if std is None else f"{text} +- {std:.4f}"


def render(tables: Mapping[str, Sequence[Mapping[str, Any]]], fmt: str) -> str:
    """The tables as ``markdown``, ``csv`` (a ``group`` column first) or ``json``."""
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
        lines += [f"Downstream {group}: balanced accuracy and AIL, mean +- std over seeds", "",
                  "| ordering | label | balanced accuracy | delta vs first task | AIL | > ImageNet | > scratch "
                  "| seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['ordering']} | {r['label']} | {_fmt(r['balanced_accuracy'], r['std'])} | "
                f"{_fmt(r['delta'], signed=True)} | {_fmt(r['ail'], r['ail_std'])} | {r['beats_imagenet']} | "
                f"{r['beats_scratch']} | {', '.join(map(str, r['seeds']))} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n")
