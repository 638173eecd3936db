"""plumbing.lr_selection: the best trial by its criterion, every score recorded, divergence and bad grids."""

from __future__ import annotations

import math

import pytest

from plumbing.errors import UserError
from plumbing.lr_selection import Trial, parse_lr_grid, select_lr


def test_picks_the_highest_or_lowest_score_and_records_every_trial() -> None:
    scores = {1e-4: 0.5, 3e-4: 0.8, 1e-3: 0.6}
    seen: list[Trial] = []
    best = select_lr(list(scores), scores.__getitem__, criterion="accuracy", maximise=True, on_trial=seen.append)
    assert best.lr == 3e-4 and [t.lr for t in best.trials] == list(scores) and seen == list(best.trials)
    lowest = select_lr(list(scores), scores.__getitem__, criterion="loss", maximise=False)
    assert lowest.lr == 1e-4
    assert best.to_dict() == {"lr": 3e-4, "criterion": "accuracy", "best": "highest",
                              "trials": [{"lr": k, "score": v} for k, v in scores.items()]}


def test_diverged_trials_lose_and_ties_go_to_the_earlier_rate() -> None:
    scores = {0.1: math.nan, 0.01: 0.7, 0.001: 0.7, 1.0: -math.inf}
    choice = select_lr(list(scores), scores.__getitem__, criterion="accuracy", maximise=True)
    assert choice.lr == 0.01 and choice.to_dict()["trials"][0]["score"] is None
    with pytest.raises(UserError, match="diverged"):
        select_lr([0.1, 1.0], lambda lr: math.nan, criterion="accuracy", maximise=True)


@pytest.mark.parametrize("text", ["", "a,b", "0,1e-3", "1e-3,1e-3", "inf"])
def test_bad_grids_are_one_line(text: str) -> None:
    with pytest.raises(UserError, match="--lr-grid"):
        parse_lr_grid(text)


def test_grid_parses() -> None:
    assert parse_lr_grid("1e-4, 3e-4,1e-3") == (1e-4, 3e-4, 1e-3)


def test_a_grid_of_one_rate_is_chosen_without_a_trial() -> None:
    def trial(lr: float) -> float:
        raise AssertionError("no trial for a grid of one")

    choice = select_lr([3e-4], trial, criterion="loss", maximise=False)
    assert choice.lr == 3e-4 and choice.trials == ()
