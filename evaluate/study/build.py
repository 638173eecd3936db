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


def _adaptation(found: Survey, assets: Assets) -> str:
    runs = found.of_kind("adaptation")
    if not runs:
        return "<p>No finished adaptation run in this runs folder (<code>python -m adapt.train</code>).</p>"
    return (adaptation_tables(pillar_table("adaptation", found.runs_dir)) + "<h2>Cells</h2>\n"
            + "\n".join(adaptation_run(run, assets) for run in runs))


def _curricula(found: Survey, assets: Assets) -> str:
    runs = found.of_kind("curriculum")
    if not runs:
        return "<p>No finished curriculum run in this runs folder (<code>python -m ssl.curriculum run</code>).</p>"
    return (curriculum_tables(pillar_table("curriculum", found.runs_dir)) + "<h2>Runs</h2>\n"
            + "\n".join(curriculum_run(run, assets) for run in runs))


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
                  "adaptation.html": _adaptation(found, assets), "curricula.html": _curricula(found, assets),
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
