"""The trainer skeleton: run a trainer's steps, from its checkpointed position, as a full run or a trial.

Every trainer of the platform (the GAN, DCAN, a pretext step, the downstream
classifier) is an object with a method ``step(batch) -> dict[str, float]``
(one update on one batch, returning the numbers to log, a ``"loss"`` among
them) and a :class:`plumbing.training.Progress` record (``state``) whose
``iteration`` counts finished steps (the GAN's step also takes that index,
``step(iteration, batch)``; its trainer hands the runner a one-line wrapper).
:class:`StepRunner` is all the rest:

- an Ignite engine whose process function calls ``step(batch)`` and then
  sets ``state.iteration`` to the engine's iteration, so that during a step
  ``state.iteration`` is the number of steps before it (the index a trainer
  seeds its random draws of the step with);
- resumption: the engine starts at ``state.iteration`` (restored from a
  checkpoint, 0 for a fresh run), in epoch ``iteration // epoch_length``;
  the batch stream must start there too (the caller builds it from the same
  iteration);
- periodic work (:meth:`StepRunner.every`: an evaluation, an epoch's mean
  loss) and work at the start of each epoch (:meth:`StepRunner.at_epoch_start`),
  registered before the checkpoints, so that a checkpoint holds what they
  computed for the same iteration;
- a full run (:meth:`StepRunner.train`): the finite-loss guard, atomic
  checkpoints, progress bar and TensorBoard of
  :func:`plumbing.training.attach_training_handlers`; a non-finite loss
  raises :class:`plumbing.training.TrainingDiverged` naming the last good
  checkpoint;
- or a learning-rate trial (:meth:`StepRunner.trial`): no checkpoints, and
  a non-finite loss calls ``on_diverged()`` and ends the trial quietly
  (:func:`plumbing.training.attach_trial_handlers`).

A run lasts ``total`` iterations counted from 0 (not from the resumed
position). Ignite's epochs are ``epoch_length`` iterations; when ``total``
is not a whole number of epochs the last one is cut short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from .training import Progress, attach_training_handlers, attach_trial_handlers


class StepRunner:
    """Runs ``step`` from ``state.iteration`` to ``total`` iterations (module docstring)."""

    def __init__(
        self, step: Callable[[Any], Mapping[str, float]], state: Progress, *, total: int, epoch_length: int
    ) -> None:
        if total < 1 or epoch_length < 1:
            raise ValueError(f"a run needs total >= 1 and epoch_length >= 1, not {total} and {epoch_length}")
        self.state, self.total, self.epoch_length = state, total, epoch_length
        self.start = state.iteration

        def process(engine: Engine, batch: Any) -> Mapping[str, float]:
            out = step(batch)
            state.iteration = engine.state.iteration
            return out

        self.engine = Engine(process)
        self.engine.add_event_handler(Events.STARTED, self._resume_position)

    def _resume_position(self, engine: Engine) -> None:
        engine.state.iteration = self.start
        engine.state.epoch = self.start // self.epoch_length

    def every(self, interval: int, handler: Callable[[int], None], *, at_end: bool = False) -> None:
        """``handler(iteration)`` after every ``interval``-th iteration and, with ``at_end``, after the last one
        (once, when that is also an ``interval``-th one)."""
        handled_at = -1

        def call(engine: Engine) -> None:
            nonlocal handled_at
            if handled_at == engine.state.iteration:
                return
            handled_at = engine.state.iteration
            handler(engine.state.iteration)

        events = Events.ITERATION_COMPLETED(every=interval)
        self.engine.add_event_handler(events | Events.COMPLETED if at_end else events, call)

    def at_epoch_start(self, handler: Callable[[int], None]) -> None:
        """``handler(epoch)`` at the start of every epoch, counted from 0."""
        self.engine.add_event_handler(Events.EPOCH_STARTED, lambda engine: handler(engine.state.epoch - 1))

    def train(
        self, batches: Iterable[Any], *, run_dir: Path, to_save: Mapping[str, Any], checkpoint_every: int,
        progress: bool, on_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        """The full run into ``run_dir``: checkpoints of ``to_save`` every ``checkpoint_every`` iterations and at
        the end, ``on_checkpoint(iteration)`` on rank 0 just before each (snapshots of the same state)."""
        attach_training_handlers(
            self.engine, run_dir=run_dir, to_save=to_save, checkpoint_every=checkpoint_every, progress=progress,
            on_checkpoint=None if on_checkpoint is None else lambda engine: on_checkpoint(engine.state.iteration),
        )
        self._run(batches)

    def trial(self, batches: Iterable[Any], *, progress: bool, desc: str, on_diverged: Callable[[], None]) -> None:
        """A learning-rate trial: no checkpoints; a non-finite ``"loss"`` calls ``on_diverged()`` and stops."""
        attach_trial_handlers(self.engine, progress=progress, desc=desc, on_diverged=on_diverged)
        self._run(batches)

    def _run(self, batches: Iterable[Any]) -> None:
        if self.total % self.epoch_length:
            self.engine.run(batches, max_iters=self.total, epoch_length=self.epoch_length)
        else:
            self.engine.run(batches, max_epochs=self.total // self.epoch_length, epoch_length=self.epoch_length)
