"""The progressive-growing schedule."""

from __future__ import annotations

import pytest

from synth.schedule import ProgressiveSchedule


def test_fixed_resolution_is_always_stable() -> None:
    s = ProgressiveSchedule(32, 32, fade_kimg=1, stable_kimg=1)
    assert s.state(0) == (32, 1.0) and s.state(10**6) == (32, 1.0)


def test_progressive_stages_and_fade() -> None:
    s = ProgressiveSchedule(16, 64, fade_kimg=2, stable_kimg=1)
    assert s.state(0) == (16, 1.0)
    assert s.state(999) == (16, 1.0)
    assert s.state(1000) == (32, 0.0)  # fade of 32 starts
    assert s.state(2000) == (32, pytest.approx(0.5))
    assert s.state(3000) == (32, 1.0)  # stable at 32
    assert s.state(4500) == (64, pytest.approx(0.25))
    assert s.state(10**7) == (64, 1.0)


def test_bad_resolutions_are_refused() -> None:
    with pytest.raises(ValueError):
        ProgressiveSchedule(24, 64, 1, 1)
    with pytest.raises(ValueError):
        ProgressiveSchedule(64, 32, 1, 1)
