"""Ignite engine set-up shared by every trainer.

:func:`attach_training_handlers` gives an engine, in this order of events:
a finite-loss guard (a NaN or inf stops training with
:class:`TrainingDiverged` before anything is saved, so the last checkpoint
on disk is the last good one), atomic checkpoints every ``checkpoint_every``
iterations (Ignite's :class:`~ignite.handlers.Checkpoint` with an atomic
:class:`~ignite.handlers.DiskSaver`), a tqdm progress bar and TensorBoard
scalars of the engine's output dict.

Checkpoints hold only tensors and plain Python values, so
:func:`load_checkpoint` reads them with ``torch.load(weights_only=True)``:
loading never executes code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, ProgressBar
from ignite.handlers.tensorboard_logger import OutputHandler, TensorboardLogger

from .errors import UserError

CHECKPOINT_PREFIX = "checkpoint"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def prepare_run_dir(runs_dir: Path, name: str, resume: bool) -> Path:
    """Create (or, with ``resume``, reuse) the run folder ``runs_dir/name``.

    A folder that already holds checkpoints is refused without ``resume`` so a
    new run never mixes with an old one; ``resume`` without a checkpoint is
    refused too.
    """
    run_dir = runs_dir / name
    has_checkpoint = latest_checkpoint(run_dir) is not None
    if resume and not has_checkpoint:
        raise UserError(f"--resume: no checkpoint in {run_dir}")
    if not resume and has_checkpoint:
        raise UserError(f"run folder {run_dir} already holds a run; pass --resume to continue it or choose another --name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run folder {run_dir}: {exc.strerror}") from exc
    return run_dir


def _checkpoints(run_dir: Path) -> list[Path]:
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
    found = _checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # pickle / zip errors of a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def restore(objects: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
    """Load each object's state from a checkpoint dict (Ignite's ``Checkpoint.load_objects``)."""
    missing = [k for k in objects if k not in checkpoint]
    if missing:
        raise UserError(f"checkpoint lacks {', '.join(missing)}; it was not written by this trainer")
    Checkpoint.load_objects(to_load=dict(objects), checkpoint=dict(checkpoint))


def _check_finite(engine: Engine) -> None:
    output = engine.state.output
    if isinstance(output, Mapping):
        for key, value in output.items():
            v = float(value)
            if not math.isfinite(v):
                raise TrainingDiverged(
                    f"loss {key} became {v} at iteration {engine.state.iteration}; training stopped, "
                    "the last checkpoint on disk is the last good one"
                )


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
    ``on_checkpoint(engine)`` runs just before each checkpoint, after the
    finite-loss guard (for sample grids and exports of the same state).
    """
    engine.add_event_handler(Events.ITERATION_COMPLETED, _check_finite)
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
        if on_checkpoint is not None:
            on_checkpoint(eng)
        saver(eng)
        for old in _checkpoints(run_dir)[:-n_saved]:  # also those of earlier (resumed) processes
            old.unlink(missing_ok=True)

    engine.add_event_handler(Events.ITERATION_COMPLETED(every=checkpoint_every) | Events.COMPLETED, _save)
    if progress:
        ProgressBar(persist=True).attach(engine, output_transform=lambda out: {k: float(v) for k, v in out.items()})
    if tensorboard:
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
