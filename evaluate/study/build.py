"""Build the study report of a runs folder: its pages written into a fresh folder that replaces the old one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from evaluate.study.assets import Assets
from evaluate.study.html import guarded, page
from evaluate.study.pages import gan_page, overview, runs_page, stores_page
from evaluate.study.results_pages import adaptation_run, adaptation_tables, curriculum_run, curriculum_tables
from evaluate.study.survey import Survey, survey
from evaluate.study.tables import pillar_table
from plumbing.errors import UserError

PAGES = (("index.html", "Overview"), ("stores.html", "Stores"), ("adaptation.html", "Adaptation"),
         ("curricula.html", "Curricula"), ("gan.html", "GAN runs"), ("runs.html", "Runs"))


RESULT_PAGES = {
    "adaptation": ("python -m adapt.train", adaptation_tables, adaptation_run, "Cells"),
    "curriculum": ("python -m ssl.curriculum run", curriculum_tables, curriculum_run, "Runs"),
}
"""Per kind of run with a table: the command that makes such runs, the tables' and one run's HTML, the heading."""


def _results_page(found: Survey, assets: Assets, kind: str) -> str:
    """The pillar's tables over the runs of ``kind``, then one section per finished run."""
    command, tables, one_run, heading = RESULT_PAGES[kind]
    runs = found.of_kind(kind)
    if not runs:
        return f"<p>No finished {kind} run in this runs folder (<code>{command}</code>).</p>"
    return (tables(pillar_table(kind, found.runs_dir)) + f"<h2>{heading}</h2>\n"
            + "\n".join(guarded(run.name, lambda run=run: one_run(run, assets)) for run in runs))


MARKER = ".study-report"
"""The file every report folder holds: only a folder with it, with every page of a report, or an empty one is ever
replaced."""


def _check_out(runs_dir: Path, out: Path) -> None:
    """Refuse an ``out`` that would replace the runs folder (or a folder above it), or a folder that is not a
    report (an existing, non-empty folder without :data:`MARKER`)."""
    target, runs = out.resolve(), runs_dir.resolve()
    if runs.is_relative_to(target):
        raise UserError(f"--out {out} would replace the runs folder {runs_dir}; name a folder inside it or elsewhere")
    report = (out / MARKER).is_file() or all((out / name).is_file() for name, _ in PAGES)  # or an older report
    if out.exists() and not (out.is_dir() and (report or not any(out.iterdir()))):
        raise UserError(f"--out {out} exists and is not a study report; name a new folder (a report is replaced "
                        "only where it holds its marker file)")


def _sweep(out: Path) -> None:
    """Remove the staging folders of builds that were killed (``.<out>-new-*``, ``.<out>-old-*``)."""
    for stale in [*out.parent.glob(f".{out.name}-new-*"), *out.parent.glob(f".{out.name}-old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _swap(staging: Path, out: Path) -> None:
    """Put ``staging`` in the place of ``out``; on any failure the previous report is back where it was."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent)) / "report"
    try:
        if out.exists():
            out.rename(old)
        staging.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    finally:
        shutil.rmtree(old.parent, ignore_errors=True)


def build_report(runs_dir: Path, out: Path) -> Path:
    """Write the report of ``runs_dir`` into ``out`` and return its ``index.html``.

    The pages are written into a staging folder beside ``out`` that then
    replaces it whole: an interrupted or failed build leaves the previous
    report as it was (a killed one leaves a hidden staging folder, removed by
    the next build). The folder gets the permissions of the umask, as any
    folder a command makes.

    Raises:
        UserError: ``runs_dir`` is not a folder; ``out`` is the runs folder or above it, or an existing folder
            that is not a report; ``out`` cannot be written.
    """
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder of runs")
    _check_out(runs_dir, out)
    found = survey(runs_dir, skip=out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _sweep(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
    except OSError as exc:
        raise UserError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    try:
        assets = Assets(staging)
        bodies = {"index.html": overview(found), "stores.html": stores_page(found, assets),
                  "adaptation.html": _results_page(found, assets, "adaptation"),
                  "curricula.html": _results_page(found, assets, "curriculum"),
                  "gan.html": gan_page(found, assets), "runs.html": runs_page(found)}
        for name, title in PAGES:
            heading = f"Study report: {runs_dir.resolve().name}" if name == "index.html" else title
            (staging / name).write_text(page(heading, PAGES, name, bodies[name]))
        (staging / MARKER).write_text(f"written by python -m evaluate.report {runs_dir}\n")
        _swap(staging, out)
    except OSError as exc:
        raise UserError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "index.html"
