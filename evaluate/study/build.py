"""Build the study report of a runs folder: its pages written into a fresh folder that replaces the old one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from evaluate.study.assets import Assets
from evaluate.study.html import page
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
            + "\n".join(one_run(run, assets) for run in runs))


def build_report(runs_dir: Path, out: Path) -> Path:
    """Write the report of ``runs_dir`` into ``out`` (replaced whole once every page is written; an interrupted
    build leaves the previous report as it was) and return its ``index.html``.

    Raises:
        UserError: ``runs_dir`` is not a folder, or ``out`` cannot be written.
    """
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder of runs")
    found = survey(runs_dir, skip=out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
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
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent)) / "report"
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"
