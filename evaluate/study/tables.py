"""The pillars' own tables, as their commands print them in JSON.

The report shows the adaptation table (the seed's Tables 4-6 form, with the
selection tables) and the curriculum tables (Tables 1 and 2) exactly as
``python -m adapt.report --format json`` and ``python -m ssl.curriculum runs
--format json`` compute them: it runs those commands in a child process
instead of importing the pillars (``evaluate`` imports no pillar), so a
table in the report and the one a command prints can never differ. A
command that fails gives its last error line, which the report shows in
place of the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: ``ssl`` is not installed (it would shadow the standard library), so its commands run
from here."""
COMMANDS = {
    "adaptation": ("adapt.report", "--format", "json"),
    "curriculum": ("ssl.curriculum", "runs", "--format", "json"),
}


@dataclass(frozen=True)
class PillarTable:
    command: str
    """The command line, as a user would type it."""
    tables: dict[str, Any] | None
    error: str | None


def pillar_table(kind: str, runs_dir: Path) -> PillarTable:
    """The JSON tables of ``kind`` (:data:`COMMANDS`) over ``runs_dir``, or the command's error line."""
    shown = "python -m " + " ".join([*COMMANDS[kind], "--runs-dir", str(runs_dir)])
    argv = [*COMMANDS[kind], "--runs-dir", str(runs_dir.resolve())]
    done = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return PillarTable(shown, None, lines[-1] if lines else f"exit code {done.returncode}")
    try:
        return PillarTable(shown, json.loads(done.stdout), None)
    except ValueError as exc:
        return PillarTable(shown, None, f"its output is not JSON ({exc})")
