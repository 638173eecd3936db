"""Learning-rate selection, the same for every training step (downstream fine-tuning, each SSL step).

The policy of the seed's curricular pipeline: each learning rate of a grid
trains a short *trial* (a few epochs) from the same starting point; the one
whose trial scores best by the step's criterion (highest validation balanced
accuracy for a classifier, lowest loss for a pretext task) trains the full
run. :func:`select_lr` runs the trials through a callback, records every
score and returns the choice. A trial whose score is not finite (the loss
diverged) counts as the worst; when every trial diverged there is no choice,
which is a :class:`UserError`. Ties go to the earlier learning rate of the
grid. A grid of one learning rate has nothing to compare: it is chosen
without a trial.

:func:`choose_lr` is the one path every trainer takes to its full run's rate:
the rate the user gave, or :func:`select_lr` over the grid with each trial
reported; :func:`resumed_choice` reads the choice back from a checkpoint, so a
resumed run keeps its rate without repeating the trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .cli import parse_list
from .distributed import print_on_main
from .errors import UserError


@dataclass(frozen=True)
class Trial:
    lr: float
    score: float


@dataclass(frozen=True)
class LrChoice:
    """The chosen learning rate, every trial's score, and what was compared."""

    lr: float
    trials: tuple[Trial, ...]
    criterion: str
    maximise: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "criterion": self.criterion,
            "best": "highest" if self.maximise else "lowest",
            "trials": [{"lr": t.lr, "score": t.score if math.isfinite(t.score) else None} for t in self.trials],
        }


def parse_lr_grid(text: str, option: str = "--lr-grid") -> tuple[float, ...]:
    """``"1e-4,3e-4,1e-3"`` as positive finite floats (an option value, :func:`plumbing.cli.parse_list`: no empty
    item, none twice; one :class:`UserError` line otherwise)."""
    grid = tuple(parse_list(text, option, float, "numbers such as 1e-4,3e-4,1e-3"))
    if not all(math.isfinite(lr) and lr > 0 for lr in grid):
        raise UserError(f"{option} {text!r} must hold positive finite learning rates")
    return grid


def select_lr(
    grid: Sequence[float],
    trial: Callable[[float], float],
    *,
    criterion: str,
    maximise: bool,
    on_trial: Callable[[Trial], None] | None = None,
) -> LrChoice:
    """Run ``trial(lr)`` for every learning rate of ``grid`` and choose the best score.

    ``criterion`` names the score for the record (``"validation balanced
    accuracy"``); ``maximise`` says whether higher is better. ``on_trial``
    receives each finished trial (to report or record it).
    """
    if not grid:
        raise UserError("the learning-rate grid is empty")
    if len(grid) == 1:
        return LrChoice(float(grid[0]), (), "the grid's only value", maximise)
    trials: list[Trial] = []
    for lr in grid:
        done = Trial(float(lr), float(trial(float(lr))))
        trials.append(done)
        if on_trial is not None:
            on_trial(done)
    finite = [t for t in trials if math.isfinite(t.score)]
    if not finite:
        tried = ", ".join(f"{t.lr:g}" for t in trials)
        raise UserError(f"every learning rate of the grid ({tried}) diverged; try smaller ones")
    best = max(finite, key=lambda t: t.score) if maximise else min(finite, key=lambda t: t.score)
    return LrChoice(best.lr, tuple(trials), criterion, maximise)


def choose_lr(
    given: float | None,
    grid: Sequence[float],
    trial: Callable[[float], float],
    *,
    criterion: str,
    maximise: bool,
    trial_epochs: int,
    label: str = "",
) -> LrChoice:
    """``given`` (recorded as ``"given"``), or the best of ``grid``'s trials (:func:`select_lr`).

    Each finished trial is one stderr line on the main process:
    ``"{label}lr 0.001: {criterion} 0.8123 after 1 epoch(s)"`` (``label``
    names what is trained, such as ``"rotation "``).
    """
    if given is not None:
        return LrChoice(given, (), "given", maximise)

    def report(done: Trial) -> None:
        print_on_main(f"{label}lr {done.lr:g}: {criterion} {done.score:.4f} after {trial_epochs} epoch(s)")

    return select_lr(grid, trial, criterion=criterion, maximise=maximise, on_trial=report)


def resumed_choice(saved: Mapping[str, Any], maximise: bool | None = None) -> LrChoice:
    """The choice recorded in a checkpoint (:meth:`LrChoice.to_dict`): its rate and criterion, without the trials;
    whether higher was better as the record says (``best``) unless ``maximise`` is given."""
    return LrChoice(float(saved["lr"]), (), saved["criterion"],
                    saved["best"] == "highest" if maximise is None else maximise)
