"""Ignite engine set-up shared by every trainer.

:func:`attach_training_handlers` gives an engine, in this order of events:
a finite-loss guard (a NaN or inf stops training with
:class:`TrainingDiverged` before anything is saved, so the last checkpoint
on disk is the last good one; the message names it), atomic checkpoints every
``checkpoint_every`` iterations (Ignite's :class:`~ignite.handlers.Checkpoint`
with an atomic :class:`~ignite.handlers.DiskSaver`; a full disk is one
:class:`UserError` line), a tqdm progress bar and TensorBoard scalars of the
engine's output dict. The engine's own error log lines are silenced: the
exception that ends a run is reported once, by the command.

Under several processes (:mod:`plumbing.distributed`) every rank builds the
same handlers (Ignite's checkpoint writes on rank 0 only; building it on one
rank alone could hang a collective), and only rank 0 writes snapshots
(``on_checkpoint``), removes old checkpoints, shows the progress bar and
writes TensorBoard.

:func:`attach_trial_handlers` sets up the bare engine of a learning-rate
trial instead: no checkpoints, quiet, a progress bar, and a stop at the first
non-finite loss. :class:`Progress` is the checkpointed position and record of
a run that every trainer keeps (or extends). The skeleton that runs a
trainer's steps with these handlers is :mod:`plumbing.engine`.

Checkpoints hold only tensors and plain Python values, so
:func:`load_checkpoint` reads them with ``torch.load(weights_only=True)``:
loading never executes code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, ProgressBar
from ignite.handlers.tensorboard_logger import OutputHandler, TensorboardLogger

from .distributed import is_main_process
from .errors import UserError

CHECKPOINT_PREFIX = "checkpoint"


@dataclass
class Progress:
    """The checkpointed progress of a run: its record (configuration, command, resume commands) and the
    number of finished iterations, which is where a resumed run starts.

    Every trainer's progress is this record or a dataclass that extends it
    with what its method must carry across a resume (the chosen learning
    rate, the best epoch, an evaluation history, a regulariser's running
    mean). ``state_dict`` / ``load_state_dict`` read and write the fields by
    name, as Ignite's checkpoints need; a checkpoint without one of them is a
    ``KeyError`` that :func:`restore` turns into one :class:`UserError`.
    """

    config: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in asdict(self):
            setattr(self, key, state[key])


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoint_<iteration>.pt`` files of ``run_dir``, oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.glob(f"{CHECKPOINT_PREFIX}_*.pt"):
        try:
            found.append((int(path.stem.rsplit("_", 1)[1]), path))
        except ValueError:
            continue
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoint_<iteration>.pt`` in ``run_dir``, or ``None``."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # pickle / zip errors of a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from exc


def _load_failure(exc: Exception) -> str:
    """One line on why ``torch.load`` failed, without torch's advice to load with ``weights_only=False``."""
    text = str(exc)
    if "Weights only load failed" in text:
        return "it holds objects other than tensors and plain values, and loading those would execute code"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def restore(objects: Mapping[str, Any], checkpoint: Mapping[str, Any], path: Path | None = None) -> None:
    """Load each object's state from a checkpoint dict (Ignite's ``Checkpoint.load_objects``).

    A checkpoint of another trainer or version is one :class:`UserError`
    naming ``path`` (the file the dict was read from), when given.
    """
    what = f"checkpoint {path}" if path is not None else "the checkpoint"
    missing = [k for k in objects if k not in checkpoint]
    if missing:
        raise UserError(f"{what} lacks {', '.join(missing)}; it was not written by this trainer")
    try:
        Checkpoint.load_objects(to_load=dict(objects), checkpoint=dict(checkpoint))
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # shapes or entries of another trainer or version
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} does not fit this trainer: {first}") from exc


def _finite_guard(run_dir: Path) -> Callable[[Engine], None]:
    def check(engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, Mapping):
            return
        for key, value in output.items():
            v = float(value)
            if not math.isfinite(v):
                last = latest_checkpoint(run_dir)
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written"
                raise TrainingDiverged(
                    f"loss {key} became {v} at iteration {engine.state.iteration}; training stopped, {kept}"
                )

    return check


def attach_training_handlers(
    engine: Engine,
    *,
    run_dir: Path,
    to_save: Mapping[str, Any],
    checkpoint_every: int,
    log_every: int = 10,
    n_saved: int = 2,
    progress: bool = True,
    tensorboard: bool = True,
    on_checkpoint: Callable[[Engine], None] | None = None,
) -> Checkpoint:
    """Attach the finite-loss guard, checkpoints, a progress bar and TensorBoard logging.

    The engine's ``process_function`` must return a ``dict`` of float losses.
    Checkpoints are also written when the run completes (once per iteration).
    ``on_checkpoint(engine)`` runs on rank 0 just before each checkpoint, after
    the finite-loss guard (for sample grids and exports of the same state).
    """
    main = is_main_process()
    engine.logger.setLevel(logging.CRITICAL)  # Ignite logs the exception that ends a run; the command reports it
    engine.add_event_handler(Events.ITERATION_COMPLETED, _finite_guard(run_dir))
    saver = Checkpoint(
        dict(to_save),
        DiskSaver(str(run_dir), require_empty=False, atomic=True),
        filename_prefix="",
        n_saved=n_saved,
        global_step_transform=lambda eng, _: eng.state.iteration,
        filename_pattern=CHECKPOINT_PREFIX + "_{global_step}.{ext}",
    )
    saved_at = [-1]

    def _save(eng: Engine) -> None:
        if saved_at[0] == eng.state.iteration:
            return
        saved_at[0] = eng.state.iteration
        try:
            if on_checkpoint is not None and main:
                on_checkpoint(eng)
            saver(eng)
        except OSError as exc:  # a full disk, a vanished folder: nothing half-written stays (atomic writes)
            raise UserError(
                f"cannot write the snapshot of iteration {eng.state.iteration} in {run_dir}: {exc.strerror or exc}"
            ) from exc
        if main:
            for old in checkpoints(run_dir)[:-n_saved]:  # also those of earlier (resumed) processes
                old.unlink(missing_ok=True)

    engine.add_event_handler(Events.ITERATION_COMPLETED(every=checkpoint_every) | Events.COMPLETED, _save)
    if progress and main:
        ProgressBar(persist=True).attach(engine, output_transform=lambda out: {k: float(v) for k, v in out.items()})
    if tensorboard and main:
        tb = TensorboardLogger(log_dir=str(run_dir / "tb"))
        tb.attach(
            engine,
            log_handler=OutputHandler(tag="train", output_transform=lambda out: {k: float(v) for k, v in out.items()}),
            event_name=Events.ITERATION_COMPLETED(every=log_every),
        )
        engine.add_event_handler(Events.COMPLETED, lambda _: tb.close())

        def _close_and_reraise(_: Engine, exc: BaseException) -> None:
            # Ignite re-raises only when no EXCEPTION_RAISED handler exists, so this one must.
            tb.close()
            raise exc

        engine.add_event_handler(Events.EXCEPTION_RAISED, _close_and_reraise)
    return saver


def attach_trial_handlers(engine: Engine, *, progress: bool, desc: str, on_diverged: Callable[[], None]) -> None:
    """A learning-rate trial's engine: no log lines, a progress bar on the main process, and at the first
    non-finite loss ``on_diverged()`` (to record the trial as the worst) and a stop."""
    engine.logger.setLevel("CRITICAL")
    if progress and is_main_process():
        ProgressBar(persist=True, desc=desc).attach(engine, output_transform=lambda out: out)

    @engine.on(Events.ITERATION_COMPLETED)
    def _diverged(eng: Engine) -> None:
        if not math.isfinite(eng.state.output["loss"]):
            on_diverged()
            eng.terminate()
