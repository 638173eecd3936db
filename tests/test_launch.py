"""Grids through submitit: the dry run, the local executor's real subprocesses, requeue after pre-emption.

Slurm itself is not here; its jobs are the same :class:`plumbing.launch.CellJob`
as the local executor's, and the dry run shows the Slurm jobs' shape.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import submitit

from adapt.train import main
from plumbing.cli import run_cli
from plumbing.errors import UserError
from plumbing.grid import Cell
from plumbing.launch import (
    CellJob,
    Plan,
    Resources,
    cell_argv,
    distributed_environment,
    earlier_failures,
    only_cell,
)
from ssl.curriculum import main as curriculum
from tests.test_adapt_train import PHANTOMS

GRID = [*PHANTOMS, "--alignment", "none,dcan,ours", "--steps", "4", "--eval-every", "2", "--name", "g"]
CELLS = ["g-dcan-seed0", "g-none-seed0", "g-ours-seed0"]
LOCAL_JOBS = ["--launcher", "submitit", "--submitit-cluster", "local", "--gpus-per-cell", "0", "--cpus-per-gpu", "1"]


def _run(runs: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*args, "--runs-dir", str(runs)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return captured.out + captured.err


def _scores(run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    return {k: results[k] for k in ("balanced_accuracy", "recall", "history")}


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid run one cell after another in this process (``--launcher local``)."""
    runs = tmp_path_factory.mktemp("here")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*GRID, "--runs-dir", str(runs)])
    assert exit_info.value.code == 0
    return runs


def test_the_dry_run_prints_every_job_with_its_resources_and_submits_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(tmp_path / "runs", capsys, *PHANTOMS, "--alignment", "none,ours", "--seeds", "0,1", "--launcher",
               "submitit", "--dry-run", "--gpus-per-cell", "4", "--slurm-partition", "gpu", "--steps", "2")
    assert "4 job(s) on slurm" in out and "1 node(s) x 4 GPU(s), 1 task(s) per node, 32 CPU(s) per task" in out
    jobs = [line for line in out.splitlines() if line.startswith("  adapt-")]
    assert len(jobs) == 4 and all("torch.distributed.run --standalone --nproc_per_node 4 -m adapt.train" in j
                                  for j in jobs)
    assert all("--launcher" not in j and "--dry-run" not in j and "--only-cell adapt-" in j for j in jobs)
    assert not any(p.name.startswith("adapt-") for p in (tmp_path / "runs").glob("*"))


@pytest.mark.slow
def test_the_local_executor_runs_the_grid_as_jobs_equal_to_the_grid_run_here(
    here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(tmp_path, capsys, *GRID, *LOCAL_JOBS)
    assert "submitted 3 job(s)" in out and "3 cell job(s) finished" in out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "submitit") == CELLS
    for cell in CELLS:
        assert _scores(tmp_path / cell) == _scores(here / cell)
    assert "nothing to submit" in _run(tmp_path, capsys, *GRID, *LOCAL_JOBS)  # the same command again


def _process_running(marker: str) -> int | None:
    """The pid of a running process whose command line holds ``marker`` (Linux ``/proc``)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                return int(entry.name)
        except OSError:
            continue
    return None


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="finds the job's task through Linux /proc")
def test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_result(here: Path, tmp_path: Path) -> None:
    """The job's task gets submitit's signal (USR2, which Slurm sends before a pre-emption or the time limit
    under submitit) once the cell has written a checkpoint: the command is stopped, the job requeued, and the
    cell resumes to the result of the uninterrupted run."""
    cell = "g-ours-seed0"
    argv = cell_argv([*GRID, "--runs-dir", str(tmp_path)], cell)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=10, cpus_per_task=1)
    job = executor.submit(CellJob("adapt.train", argv, Resources(0, 1, 1, 10, None, (), None), str(Path.cwd())))
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / cell).glob("checkpoint_*.pt")):
        time.sleep(0.05)
    command = _process_running(f"--only-cell {cell} ")  # the cell's command, a child of the job's task
    assert command is not None and list((tmp_path / cell).glob("checkpoint_*.pt")), "no checkpoint mid-run"
    os.kill(_parent(command), signal.SIGUSR2)
    job.result()
    log = Path(job.paths.stdout).read_text()  # submitit's own lines
    assert "Calling checkpoint method" in log and "Requeued job" in log  # it was stopped and requeued
    assert _scores(tmp_path / cell) == _scores(here / cell)


SSL = ["run", "--data", "phantom", "--max-images", "64", "--downstream", "phantom", "--version", "3", "--setting",
       "0s", "--length", "96", "--eval-length", "48", "--backbone", "tiny", "--image-size", "32", "--epochs", "1",
       "--batch-size", "16", "--lr", "0.05", "--downstream-lr-grid", "0.001", "--monitor-images", "32",
       "--device", "cpu", "--no-progress", "--tasks", "rotation,moco"]
SSL_RUNS = ["ssl-phantom-v3-0s-moco-seed0", "ssl-phantom-v3-0s-rotation-moco-seed0", "ssl-phantom-v3-0s-rotation-seed0"]


def _curriculum(runs: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(curriculum, [*SSL, *args, "--runs-dir", str(runs)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return captured.out + captured.err


@pytest.mark.slow
def test_a_curriculum_grid_as_jobs_trains_a_shared_step_once_and_equals_the_grid_run_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rotation, moco and rotation>moco: the rotation step is one job that two runs wait for."""
    _curriculum(tmp_path / "here", capsys)
    out = _curriculum(tmp_path / "jobs", capsys, *LOCAL_JOBS)
    waves = [line for line in out.splitlines() if line.startswith("submitted")]
    assert [w.split()[1] for w in waves] == ["2", "3", "1"]  # steps; runs and the second step; the pair's run
    assert len(re.findall(r"(?<![\w-])rotation-[0-9a-f]{16}", " ".join(waves))) == 1  # the shared step: one job
    steps = sorted(p.name.split("-")[0] for p in (tmp_path / "jobs" / "ssl-steps").iterdir())
    assert steps == ["moco", "moco", "rotation"]
    for run in SSL_RUNS:  # the same, up to the runs folder the records name
        got = (tmp_path / "jobs" / run / "results.json").read_text().replace(str(tmp_path / "jobs"), "RUNS")
        want = (tmp_path / "here" / run / "results.json").read_text().replace(str(tmp_path / "here"), "RUNS")
        assert json.loads(got) == json.loads(want)


@pytest.mark.slow
def test_a_job_at_its_time_limit_is_requeued_and_its_command_resumes(tmp_path: Path) -> None:
    """The local executor signals the job 4 s before its 16 s limit, as Slurm does ahead of a time limit: the
    command is stopped mid-count, the job requeued, and the count resumes from its file to the end."""
    count = tmp_path / "count"
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit", max_num_timeout=5)  # takes a limit in seconds
    executor.update_parameters(timeout_min=16 / 60, signal_delay_s=4)
    job = executor.submit(CellJob("tests.resumable_counter", [str(count), "100"],
                                  Resources(0, 1, 1, 1, None, (), None), str(Path.cwd())))
    job.result()
    log = Path(job.paths.stdout).read_text()
    assert log.count("Requeued job") >= 1 and count.read_text() == "100"  # 10 s of counting after the start


def test_cell_arguments_drop_the_launcher_options() -> None:
    argv = ["--alignment", "none", "--launcher", "submitit", "--gpus-per-cell=2", "--dry-run", "--slurm-setup",
            "module load cuda", "--steps", "3", "--wait", "--submitit-dir", "logs"]
    assert cell_argv(argv, "c") == ["--alignment", "none", "--steps", "3", "--only-cell", "c"]


def test_waves_jobs_and_the_environment_of_a_multi_node_task(tmp_path: Path) -> None:
    def cell(name: str, *needs: str) -> Cell[None]:
        return Cell(name, tmp_path / name, "s", {}, None, ("done",), needs)

    a, b, c, d = cell("a"), cell("b", "a"), cell("c"), cell("d", "b", "c")
    waves = Plan([a, b, c, d], {"a": [], "b": ["a"], "c": [], "d": ["b", "c"]}).waves()
    assert [[x.name for x in w] for w in waves] == [["a", "c"], ["b"], ["d"]]
    env = distributed_environment(5, 1, 8, "node3", "1234")
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node3"}
    assert env["MASTER_PORT"] == distributed_environment(0, 0, 8, "node3", "1234")["MASTER_PORT"]
    several = Resources(gpus=4, nodes=2, cpus_per_gpu=6, timeout_min=60, partition=None, setup=(), max_parallel=2)
    assert several.tasks_per_node() == 4 and several.cpus_per_task() == 6
    assert CellJob("adapt.train", ["--x"], several, ".").command()[1:] == ["-m", "adapt.train", "--x"]
    assert several.executor_parameters()["slurm_array_parallelism"] == 2
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "done").write_text("")
    assert only_cell([a, b, c], "b") == [a, b]  # with what it needs, finished: the runner skips it
    with pytest.raises(UserError, match="needs b, c, which did not finish"):
        only_cell([a, b, c, d], "d")
    with pytest.raises(UserError, match="no such cell"):
        only_cell([a], "z")


def test_a_cell_whose_job_failed_is_named_with_its_logs_last_line(tmp_path: Path) -> None:
    cells = [Cell(n, tmp_path / n, "s", {}, None, ("results.json",)) for n in ("a", "b", "c")]
    (tmp_path / "jobs.json").write_text(json.dumps({"a": "11", "b": "12"}))
    (tmp_path / "11_0_log.err").write_text("training\nRuntimeError: CUDA out of memory\n\n")
    assert earlier_failures(tmp_path, cells, "local") == ["a: job 11 ended: RuntimeError: CUDA out of memory",
                                                          "b: job 12 ended: no log line"]


def test_bad_launcher_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra, message in ((["--dry-run"], "--dry-run and --wait are for --launcher submitit"),
                           (["--launcher", "submitit", "--nodes-per-cell", "2", "--gpus-per-cell", "0"],
                            "needs --gpus-per-cell >= 1"),
                           (["--launcher", "submitit", "--max-parallel", "0"], "--max-parallel must be at least 1")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, [*PHANTOMS, "--runs-dir", str(tmp_path), *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
