"""The chain of ``bin/demo``: every pillar once, small, on the embedded default, into ``runs/demo/``.

``bin/demo`` sets up ``.venv`` (``bin/env.sh``) and runs this script from the
repository root. The chain is :func:`stages`, nine stages of one ``python -m``
command each:

* ``synth.generate``: a synthetic v1-0s store from the shipped phantom demo
  generator (``v1-0s.zarr`` and its contact sheet);
* ``evaluate.synthetic``: its quality report against ``phantom``
  (``v1-0s.zarr.quality/``; the two classifiers and the features are cached
  in ``cache/``);
* ``adapt.train``, twice: a source-only start per seed (``starts/``), then
  the adaptation grid store -> ``phantom-nih`` from each seed's start
  (``--init`` with ``{seed}``), source only (``none``: the start trained on
  for as many steps) and ``ours`` (the best preset of the adaptation
  benchmark), two seeds: row c of ``bench.adapt_phantom``, shortened;
* ``evaluate.attention``, twice: the attention maps (and AIL) of the seed-0
  cells of both presets;
* ``ssl.curriculum run``: the curriculum rotation > moco with its single
  tasks (steps in ``ssl-steps/``; each run's downstream classifier writes
  its attention maps, ``downstream/attention.png``, as phantoms bring lung
  masks);
* ``ssl.curriculum run --tasks none``: the scratch baseline of the same
  settings;
* ``evaluate.report``: the study report ``report/index.html``;

and, with ``--full-store``, before the report, the full-size v3-Xs store.
Then it prints the adaptation table, the curriculum table and the report's
path.

Each stage prints one progress line; its command's own output goes to
``logs/<stage>.log``, which a failure names (with its last lines); the chain
then stops with the command's exit code. A stage whose command exits 0 is
recorded in ``logs/finished.json`` (its command line, written atomically).
A stage is skipped when that record holds its command line, every file that
marks it finished exists and no stage before it ran in this call; otherwise
it runs, and its command skips or resumes its own finished work
(``synth.generate`` writes only a store's pending blocks, ``adapt.train`` and
``ssl.curriculum run`` skip finished cells and steps and resume interrupted
ones). So after Ctrl-C the same ``bin/demo`` goes on where it stopped, and on
a finished chain it only prints the tables again.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from plumbing.cli import make_parser
from plumbing.errors import UserError
from plumbing.files import write_json_atomic
from plumbing.run_folders import read_json_object

ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = Path("runs/demo")
"""Where the chain writes (relative to the repository root): what the study report shows, plus logs/ and cache/."""
RECORD = "finished.json"
"""The record of finished stages in ``logs/``: stage name -> its command line."""
STOP_GRACE_S = 30
"""After Ctrl-C, how long a running command may take to stop on its own before it is sent SIGINT."""


@dataclass(frozen=True)
class Stage:
    """One step of the chain: ``python -m argv[0] argv[1:]``, run from the repository root."""

    name: str
    """Short name: of its log file (``logs/<name>.log``) and its entry in the record of finished stages."""
    title: str
    """What its progress line says it does."""
    argv: tuple[str, ...]
    """The module and its arguments."""
    marks: tuple[Path, ...]
    """Files its command leaves only once it has finished (with the record, how to tell it is finished)."""


def stages(runs: Path, full_store: bool = False) -> list[Stage]:
    """The chain writing into ``runs``; ``full_store`` adds the full-size v3-Xs store before the report.

    Sized for about 8 minutes on 2 CPU cores: the store holds the 1,000
    training images the quality report's synthetic classifier trains on; the
    quality report's classifiers are ``tiny`` at 32 px (with ResNet-18 the
    report took 4.5 minutes); the adaptation follows ``bench.adapt_phantom``'s
    recipe (alignment from scratch tends to collapse): source-only starts of
    180 steps from scratch at 0.01, then 120 steps from them at 0.001, on
    1,000 evaluation images (about 35 with Pneumothorax);
    the curriculum is ``bench.ssl_phantom``'s recipe, shortened.
    """
    store, cache = runs / "v1-0s.zarr", runs / "cache"
    adapt_cells = [f"adapt-synthetic-phantom-nih-{alignment}-seed{seed}" for alignment in ("none", "ours")
                   for seed in (0, 1)]  # adapt.train's <prefix>-<alignment>-seed<s>, prefix adapt-SOURCE-TARGET
    ssl_common = ("--data", "phantom", "--max-images", "256", "--backbone", "tiny", "--image-size", "32",
                  "--epochs", "2", "--lr-grid", "0.03,0.1", "--downstream", "phantom", "--version", "3",
                  "--setting", "0s", "--length", "1000", "--eval-length", "300", "--downstream-epochs", "3",
                  "--downstream-lr-grid", "0.001", "--monitor-images", "200", "--runs-dir", str(runs),
                  "--no-progress")
    ssl_run = "ssl-phantom-v3-0s-{}-seed0"
    starts = runs / "starts"
    adapt_common = ("adapt.train", "--source", "synthetic", "--source-store", str(store), "--target", "phantom-nih",
                    "--version", "1", "--setting", "0s", "--seeds", "0,1", "--backbone", "resnet18", "--batchnorm",
                    "train", "--image-size", "32", "--target-length", "600", "--eval-length", "1000",
                    "--no-progress")
    chain = [
        Stage("store", f"synthetic v1-0s store {store}",
              ("synth.generate", "--version", "1", "--setting", "0s", "--train-per-class", "500",
               "--val-per-class", "100", "--out", str(store)),
              (runs / "v1-0s-contact.png",)),
        Stage("quality", f"quality report of {store}",
              ("evaluate.synthetic", str(store), "--reference", "phantom", "--images", "200", "--train-images",
               "1000", "--image-size", "32", "--backbone", "tiny", "--epochs", "4", "--lr", "3e-3",
               "--bootstrap", "20", "--training-images", "1000", "--runs-dir", str(cache), "--no-progress"),
              (runs / "v1-0s.zarr.quality" / "quality.md",)),
        Stage("starts", "source-only starts on the v1-0s store, seeds 0, 1",
              (*adapt_common, "--alignment", "none", "--init", "scratch", "--steps", "180", "--eval-every", "180",
               "--lr", "0.01", "--name", "start", "--runs-dir", str(starts)),
              tuple(starts / f"start-none-seed{seed}" / "results.json" for seed in (0, 1))),
        Stage("adapt", "adaptation grid v1-0s store -> phantom-nih from the starts: none, ours; seeds 0, 1",
              (*adapt_common, "--alignment", "none,ours", "--init",
               str(starts / "start-none-seed{seed}" / "classifier.safetensors"), "--steps", "120", "--eval-every",
               "40", "--lr", "0.001", "--runs-dir", str(runs)),
              tuple(runs / cell / "results.json" for cell in adapt_cells)),
        *(Stage(f"attention-{alignment}", f"attention maps of {cell}",
                ("evaluate.attention", "--run", cell, "--runs-dir", str(runs), "--no-progress"),
                (runs / cell / "attention.md",))
          for alignment, cell in (("none", adapt_cells[0]), ("ours", adapt_cells[2]))),
        Stage("curriculum", "curriculum rotation > moco with its single tasks",
              ("ssl.curriculum", "run", "--tasks", "rotation,moco", *ssl_common),
              tuple(runs / ssl_run.format(o) / "results.json" for o in ("rotation", "moco", "rotation-moco"))),
        Stage("scratch", "scratch baseline of the curriculum",
              ("ssl.curriculum", "run", "--tasks", "none", *ssl_common),
              (runs / ssl_run.format("none") / "results.json",)),
        Stage("report", f"study report of {runs}", ("evaluate.report", str(runs)),
              (runs / "report" / "index.html",)),
    ]
    if full_store:
        full = Stage("full-store", f"full-size synthetic v3-Xs store {runs / 'v3-Xs.zarr'}",
                     ("synth.generate", "--version", "3", "--setting", "Xs", "--out", str(runs / "v3-Xs.zarr")),
                     (runs / "v3-Xs-contact.png",))
        chain.insert(len(chain) - 1, full)
    return chain


TABLES = (("adaptation", ("adapt.report", "--runs-dir")), ("curriculum", ("ssl.curriculum", "runs", "--runs-dir")))
"""The tables printed at the end: what they show, and their command (followed by the runs folder)."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "bin/demo",
        f"Run every pillar once, small, on the embedded default (phantom radiographs), into {RUNS_DIR}/: a "
        "synthetic v1-0s store from the shipped demo generator (500 training images per class) and its quality "
        "report; source-only starts on it and the adaptation grid from them to phantom-nih (source only and 'ours', "
        "seeds 0 and 1, 32 px) and the "
        "attention maps of its seed-0 cells; a "
        "curriculum rotation > moco with its single tasks and the scratch baseline (tiny backbone, 32 px); the "
        "study report (evaluate.report). Then it prints the adaptation and curriculum tables and the report's "
        "path. About 8 minutes on 2 CPU cores (more while another job shares them).\n\n"
        f"One line per stage; the commands' output goes to {RUNS_DIR}/logs/, and a failed stage names its log. "
        "Stopped (Ctrl-C) and run again, it skips the finished stages.",
        example="bin/demo --full-store",
    )
    parser.add_argument("--full-store", action="store_true",
                        help=f"also write the full-size v3-Xs store {RUNS_DIR}/v3-Xs.zarr (4 classes, 4000 training "
                             "and 1000 validation images per class, 64 px; about 1.5 more minutes)")
    return parser


def run_chain(chain: Sequence[Stage], runs: Path) -> int:
    """Run ``chain`` (skipping finished stages, module docstring) into ``runs``; 0 or the failed command's code."""
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    record_path = logs / RECORD
    record = _record(record_path)
    ran = False
    for number, stage in enumerate(chain, 1):
        print(f"[{number}/{len(chain)}] {stage.title} ...", end="", flush=True)
        if not ran and record.get(stage.name) == list(stage.argv) and all(p.is_file() for p in stage.marks):
            print(" finished before; skipped", flush=True)
            continue
        ran = True
        record.pop(stage.name, None)  # not finished until its command exits 0 this time
        write_json_atomic(record_path, record)
        log, start = logs / f"{stage.name}.log", time.monotonic()
        try:
            with log.open("w") as out:
                code = call(stage.argv, out)
        except KeyboardInterrupt:
            print(" interrupted", flush=True)
            raise
        if code != 0:
            print(f" failed (exit code {code})", flush=True)
            tail = log.read_text(errors="replace").splitlines()[-5:]
            print(f"bin/demo: error: python -m {stage.argv[0]} stopped with exit code {code}; its output is in "
                  f"{log} (its last lines:)", *tail, sep="\n", file=sys.stderr)
            return code if code > 0 else 1
        record[stage.name] = list(stage.argv)
        write_json_atomic(record_path, record)
        print(f" done in {duration(time.monotonic() - start)}", flush=True)
    return 0


def _record(path: Path) -> dict[str, list[str]]:
    """The record of finished stages; an unreadable one counts as empty (every stage runs, each command skipping
    its own finished work)."""
    try:
        return read_json_object(path)
    except UserError:
        return {}


def call(argv: Sequence[str], out: IO[str]) -> int:
    """``python -m argv`` from the repository root, its output to ``out``; its exit code.

    On Ctrl-C the command (which gets the terminal's Ctrl-C too) may stop on
    its own for :data:`STOP_GRACE_S`, then it is sent SIGINT; the interrupt passes on.
    """
    with subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                          stderr=subprocess.STDOUT) as process:
        try:
            return process.wait()
        except KeyboardInterrupt:
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
                process.wait()
            raise


def print_tables(runs: Path) -> int:
    """Print the :data:`TABLES` of ``runs``, their commands run at once (each mostly starts torch); 0 or the
    exit code of the first that failed."""
    commands = [[sys.executable, "-m", *command, str(runs)] for _, command in TABLES]
    processes = [subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for command in commands]
    for (what, command), process in zip(TABLES, processes, strict=True):
        output, _ = process.communicate()
        print(f"\n{what} (python -m {' '.join(command)} {runs}):\n{output.rstrip()}", flush=True)
        if process.returncode:
            return process.returncode if process.returncode > 0 else 1
    return 0


def duration(seconds: float) -> str:
    """``41 s``, ``3 min 05 s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.chdir(ROOT)  # runs/demo, its logs and record are the repository's, wherever the script is started from
    start = time.monotonic()
    try:
        code = run_chain(stages(RUNS_DIR, args.full_store), RUNS_DIR)
        if code == 0:
            print(f"chain finished in {duration(time.monotonic() - start)}")
            code = print_tables(RUNS_DIR)
    except KeyboardInterrupt:
        print("bin/demo: interrupted; run it again to go on (finished stages are skipped)", file=sys.stderr)
        return 130
    if code == 0:
        print(f"\nreport: {RUNS_DIR / 'report' / 'index.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
