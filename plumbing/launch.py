"""Where a grid's cells run: here, one after another (``--launcher local``), or as cluster jobs (``submitit``).

A command that runs a grid (:mod:`plumbing.grid`) takes the options of
:func:`add_launcher_args`. With ``--launcher submitit`` every cell that is
not finished becomes one job of submitit's executor (Slurm by default;
``--submitit-cluster local`` runs the jobs as processes of this machine, as
the tests do). A job runs the same command for its cell alone
(``--only-cell NAME``, :func:`cell_argv`), so a cell runs, resumes and
writes its run folder exactly as it does here, and the same command run
again skips finished cells:

* one node, ``G`` GPUs: ``torchrun --standalone --nproc_per_node G -m
  MODULE ...`` (one process without ``torchrun`` when ``G <= 1``);
* ``N > 1`` nodes: one task per GPU, each the command itself with ``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set
  from submitit's job environment (:func:`distributed_environment`), which
  ``ignite.distributed`` reads.

Dependencies: the cells a cell needs (a curriculum's shared step) are jobs
of their own, never trained twice. On Slurm the cells whose needs are all
finished go into one job array and a cell that needs a pending cell is
submitted with ``--dependency=afterok:`` on the jobs of its needs; the
local executor has no dependencies, so there the cells are submitted wave
by wave, each wave after the one it needs has finished.

Pre-emption and time limits: a job's task that receives submitit's signal
(Slurm's pre-emption or time-limit warning; :meth:`CellJob.checkpoint`)
stops its command and is requeued; the command resumes the cell from its
last checkpoint. ``jobs.json`` in the submitit folder records every cell's
latest job, so a cell whose job failed for good is named, with the last
line of its log, when the command is run again or after ``--wait``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from .errors import UserError
from .files import write_json_atomic
from .grid import Cell, cell_status, in_dependency_order

LAUNCHERS = ("local", "submitit")
CLUSTERS = ("slurm", "local")
JOBS_FILE = "jobs.json"
ONLY_CELL = "--only-cell"
FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
PORT_BASE, PORT_SPAN = 20000, 20000
STOP_GRACE_S = 60
"""Seconds a stopped cell's command gets to exit on SIGTERM before SIGKILL."""


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """The launcher's options (module docstring) and ``--only-cell``, in a group of their own."""
    group = parser.add_argument_group("launcher (where the grid's cells run)")
    group.add_argument("--launcher", choices=LAUNCHERS, default="local",
                       help="local: every cell here, one after another; submitit: every cell a cluster job")
    group.add_argument("--submitit-cluster", choices=CLUSTERS, default="slurm",
                       help="submitit's executor: slurm, or local (the jobs as processes of this machine)")
    group.add_argument("--slurm-partition", default=None, help="Slurm partition of the jobs (default: the cluster's)")
    group.add_argument("--gpus-per-cell", type=int, default=1, help="GPUs per node of every cell's job (0: CPUs)")
    group.add_argument("--nodes-per-cell", type=int, default=1, help="nodes of every cell's job")
    group.add_argument("--cpus-per-gpu", type=int, default=8, help="CPU cores per GPU (per job with 0 GPUs)")
    group.add_argument("--timeout-min", type=int, default=24 * 60,
                       help="time limit of a job in minutes; a job that reaches it is requeued and resumes")
    group.add_argument("--max-parallel", type=int, default=None,
                       help="at most this many cells of a job array at once (default: no limit)")
    group.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before every job's command, e.g. 'module load cuda' (repeatable; "
                            "default: none)")
    group.add_argument("--submitit-dir", type=Path, default=None,
                       help="folder of the jobs' logs and jobs.json (default: RUNS_DIR/submitit)")
    group.add_argument("--dry-run", action="store_true", help="print the jobs (cells, resources, dependencies); "
                                                               "submit nothing")
    group.add_argument("--wait", action="store_true",
                       help="wait for the jobs and name the cells that failed (the local cluster always waits)")
    group.add_argument(ONLY_CELL, default=None, metavar="NAME",
                       help="run only this cell of the grid, whose needs have finished (what each job runs)")


@dataclass(frozen=True)
class Resources:
    """What every cell's job asks for."""

    gpus: int
    nodes: int
    cpus_per_gpu: int
    timeout_min: int
    partition: str | None
    setup: tuple[str, ...]
    max_parallel: int | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Resources:
        if args.gpus_per_cell < 0 or args.nodes_per_cell < 1 or args.cpus_per_gpu < 1 or args.timeout_min < 1:
            raise UserError("--gpus-per-cell must be >= 0, --nodes-per-cell, --cpus-per-gpu and --timeout-min >= 1")
        if args.max_parallel is not None and args.max_parallel < 1:
            raise UserError("--max-parallel must be at least 1")
        if args.nodes_per_cell > 1 and args.gpus_per_cell < 1:
            raise UserError("--nodes-per-cell > 1 needs --gpus-per-cell >= 1 (one task per GPU)")
        return cls(args.gpus_per_cell, args.nodes_per_cell, args.cpus_per_gpu, args.timeout_min,
                   args.slurm_partition, tuple(args.slurm_setup), args.max_parallel)

    def tasks_per_node(self) -> int:
        """One task per GPU on several nodes; one task (``torchrun`` inside it) on one node."""
        return self.gpus if self.nodes > 1 else 1

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s)" if self.gpus else "no GPU"
        partition = f", partition {self.partition}" if self.partition else ""
        return (f"{self.nodes} node(s) x {gpus}, {self.tasks_per_node()} task(s) per node, "
                f"{self.cpus_per_task()} CPU(s) per task, {self.timeout_min} min{partition}")

    def cpus_per_task(self) -> int:
        return self.cpus_per_gpu * max(1, self.gpus // self.tasks_per_node())

    def executor_parameters(self) -> dict[str, Any]:
        """submitit's parameters (the ``slurm_`` ones are ignored by the local executor)."""
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "nodes": self.nodes,
                                  "tasks_per_node": self.tasks_per_node(), "cpus_per_task": self.cpus_per_task(),
                                  "slurm_setup": list(self.setup)}
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.max_parallel:
            params["slurm_array_parallelism"] = self.max_parallel
        return params


def _launcher_options() -> dict[str, bool]:
    """Every launcher option string and whether it takes a value."""
    parser = argparse.ArgumentParser(add_help=False)
    add_launcher_args(parser)
    return {s: a.nargs != 0 for a in parser._actions for s in a.option_strings}


def cell_argv(argv: Sequence[str], cell: str) -> list[str]:
    """``argv`` without the launcher's options, then ``--only-cell CELL``: the command of one cell's job."""
    takes_value = _launcher_options()
    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in takes_value:
            skip = takes_value[name] and "=" not in token
            continue
        out.append(token)
    return [*out, ONLY_CELL, cell]


def distributed_environment(global_rank: int, local_rank: int, world_size: int, first_host: str,
                            job_id: str) -> dict[str, str]:
    """The ``env://`` variables of one task of a multi-node job; the port is derived from the job's id."""
    port = PORT_BASE + zlib.crc32(job_id.encode()) % PORT_SPAN
    return {"RANK": str(global_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": first_host, "MASTER_PORT": str(port)}


class CellJob:
    """One cell's job: its command in a child process, stopped and requeued on submitit's signal.

    Args:
        module: the command's module (``adapt.train``).
        argv: the cell's arguments (:func:`cell_argv`).
        resources: the job's shape (``torchrun`` on one node with several GPUs, one task per GPU on several).
        cwd: where the command runs (the repository root, for ``ssl``).
    """

    def __init__(self, module: str, argv: Sequence[str], resources: Resources, cwd: str) -> None:
        self.module, self.argv, self.resources, self.cwd = module, list(argv), resources, cwd
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        r = self.resources
        if r.nodes == 1 and r.gpus > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(r.gpus),
                    "-m", self.module, *self.argv]
        return [sys.executable, "-m", self.module, *self.argv]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.resources.nodes > 1:
            job = submitit.JobEnvironment()
            env |= distributed_environment(job.global_rank, job.local_rank, job.num_tasks, job.hostnames[0],
                                           str(job.job_id))
        return env

    def __call__(self) -> int:
        self._process = subprocess.Popen(self.command(), cwd=self.cwd, env=self.environment())
        code = self._process.wait()
        if code != 0:
            raise RuntimeError(f"python -m {self.module} {' '.join(self.argv)} exited with code {code}")
        return code

    def checkpoint(self) -> Any:
        """Stop the command (it resumes from its last checkpoint) and requeue the same job."""
        self._stop()
        return submitit.helpers.DelayedSubmission(CellJob(self.module, self.argv, self.resources, self.cwd))

    def _stop(self) -> None:
        """SIGTERM to the command, SIGKILL after :data:`STOP_GRACE_S`. Reaped with ``os.waitpid``: the signal
        interrupted ``Popen.wait`` in :meth:`__call__`, which holds the lock ``Popen.wait`` would need."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            try:
                if os.waitpid(process.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:  # already reaped
                return
            time.sleep(0.1)
        process.kill()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _process=None)


@dataclass(frozen=True)
class Plan:
    """The jobs to submit: the pending cells in dependency order and, per cell, its pending needs."""

    cells: list[Cell[Any]]
    needs: dict[str, list[str]]

    def waves(self) -> list[list[Cell[Any]]]:
        """The cells in waves: each cell after every wave holding one of its needs."""
        level: dict[str, int] = {}
        for cell in self.cells:
            level[cell.name] = 1 + max((level[n] for n in self.needs[cell.name]), default=-1)
        return [[c for c in self.cells if level[c.name] == i] for i in range(max(level.values(), default=-1) + 1)]


def plan(cells: Sequence[Cell[Any]]) -> Plan:
    """The cells that are not finished, in dependency order, with the needs among them."""
    pending = [c for c in in_dependency_order(cells) if cell_status(c) != "finished"]
    names = {c.name for c in pending}
    return Plan(pending, {c.name: [n for n in c.needs if n in names] for c in pending})


def only_cell(cells: Sequence[Cell[Any]], name: str) -> list[Cell[Any]]:
    """The cell ``name`` of the grid and the cells it needs, directly or not (``--only-cell``): those must have
    finished, so running the list runs the one cell (a runner may read its needs, as a curriculum run reads
    its steps)."""
    by_name = {c.name: c for c in cells}
    if name not in by_name:
        raise UserError(f"{ONLY_CELL} {name}: the grid has no such cell ({len(cells)} cells)")
    cell = by_name[name]
    unfinished = [n for n in cell.needs if cell_status(by_name[n]) != "finished"]
    if unfinished:
        raise UserError(f"{ONLY_CELL} {name}: it needs {', '.join(unfinished)}, which did not finish")
    wanted: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        if current not in wanted:
            wanted.add(current)
            stack += by_name[current].needs
    return [c for c in in_dependency_order(cells) if c.name in wanted]


def _last_log_line(folder: Path, job_id: str) -> str:
    for suffix in ("err", "out"):
        for path in sorted(folder.glob(f"{job_id}_*_log.{suffix}")):
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
            if lines:
                return lines[-1]
    return "no log line"


def earlier_failures(folder: Path, pending: Sequence[Cell[Any]], cluster: str) -> list[str]:
    """``cell: job ID STATE: last log line`` for every pending cell whose recorded job ended without finishing it."""
    jobs = _read_jobs(folder)
    lines = []
    for cell in pending:
        job_id = jobs.get(cell.name)
        if job_id is None:
            continue
        if cluster == "slurm":
            state = submitit.SlurmJob(folder, job_id).state
            ended = state.split()[0] in FAILED_STATES
        else:
            state, ended = "ended", True  # a local job ends with its submitting command
        if ended:
            lines.append(f"{cell.name}: job {job_id} {state}: {_last_log_line(folder, job_id)}")
    return lines


def _read_jobs(folder: Path) -> dict[str, str]:
    path = folder / JOBS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_jobs(folder: Path, jobs: dict[str, str]) -> None:
    write_json_atomic(folder / JOBS_FILE, _read_jobs(folder) | jobs)


def check_launcher_args(args: argparse.Namespace) -> None:
    """``--dry-run`` and ``--wait`` belong to ``--launcher submitit``; the resources are checked for it."""
    if args.launcher == "local" and (args.dry_run or args.wait):
        raise UserError("--dry-run and --wait are for --launcher submitit")
    if args.launcher == "submitit":
        Resources.from_args(args)
        if args.only_cell is not None:
            raise UserError(f"{ONLY_CELL} runs one cell here: use it with --launcher local")


def launch(
    cells: Sequence[Cell[Any]], args: argparse.Namespace, module: str, argv: Sequence[str] | None,
    say: Callable[[str], None] = print,
) -> int:
    """Submit the grid's unfinished cells as jobs (module docstring); returns the command's exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    resources = Resources.from_args(args)
    folder = args.submitit_dir or args.runs_dir / "submitit"
    todo = plan(cells)
    done = len(cells) - len(todo.cells)
    if not todo.cells:
        say(f"every one of the {len(cells)} cell(s) has finished; nothing to submit")
        return 0
    for line in earlier_failures(folder, todo.cells, args.submitit_cluster) if folder.is_dir() else []:
        say(f"earlier job failed: {line}")
    if args.dry_run:
        say(f"{len(todo.cells)} job(s) on {args.submitit_cluster} ({done} cell(s) finished, skipped); each: "
            f"{resources.describe()}")
        for cell in todo.cells:
            after = f"; after {', '.join(todo.needs[cell.name])}" if todo.needs[cell.name] else ""
            command = CellJob(module, cell_argv(argv, cell.name), resources, os.getcwd()).command()
            say(f"  {cell.name} -> {cell.folder}{after}: python {' '.join(command[1:])}")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=folder, cluster=args.submitit_cluster)
    executor.update_parameters(name=module, **resources.executor_parameters())
    jobs: dict[str, Any] = {}

    def job_of(cell: Cell[Any]) -> CellJob:
        return CellJob(module, cell_argv(argv, cell.name), resources, os.getcwd())

    if args.submitit_cluster == "local":  # no dependencies: wave by wave, each after the one it needs
        for wave in todo.waves():
            submitted = {c.name: executor.submit(job_of(c)) for c in wave}
            _record_jobs(folder, {n: j.job_id for n, j in submitted.items()})
            say(f"submitted {len(wave)} job(s): {', '.join(f'{n} ({j.job_id})' for n, j in submitted.items())}")
            jobs |= submitted
            for job in submitted.values():
                job.wait()
        return _report(jobs, folder, say)
    ready = [c for c in todo.cells if not todo.needs[c.name]]
    with executor.batch():
        batch = [(c.name, executor.submit(job_of(c))) for c in ready]
    jobs |= dict(batch)
    for cell in todo.cells:
        if cell.name in jobs:
            continue
        ids = ":".join(jobs[n].job_id for n in todo.needs[cell.name])
        executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{ids}"})
        jobs[cell.name] = executor.submit(job_of(cell))
    _record_jobs(folder, {n: j.job_id for n, j in jobs.items()})
    say(f"submitted {len(jobs)} job(s) to Slurm: {', '.join(f'{n} ({j.job_id})' for n, j in jobs.items())}; logs "
        f"in {folder}; run the same command again to see which finished")
    if not args.wait:
        return 0
    for job in jobs.values():
        job.wait()
    return _report(jobs, folder, say)


def _report(jobs: dict[str, Any], folder: Path, say: Callable[[str], None]) -> int:
    failed = [f"{name} (job {job.job_id}: {_last_log_line(folder, job.job_id)})"
              for name, job in jobs.items() if job.state.split()[0] in FAILED_STATES or job.exception() is not None]
    if failed:
        raise UserError(f"{len(failed)} of {len(jobs)} cell job(s) failed: {'; '.join(failed)}; run the same "
                        "command again to resume them")
    say(f"{len(jobs)} cell job(s) finished")
    return 0
