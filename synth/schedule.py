"""Progressive-growing schedule: the active resolution and fade-in as functions of images shown.

With start resolution ``r_0``, target ``r_T = r_0 * 2^S``, fade length ``F``
and stable length ``L`` (both in kimg), training first spends ``L`` kimg at
``r_0``; then each next resolution ``r_s`` (s = 1..S) fades in over ``F``
kimg, ``alpha = (kimg - t_s) / F`` rising from 0 to 1 from its start ``t_s``,
and stays stable (``alpha = 1``) for ``L`` kimg; the target resolution stays
stable until the end. ``t_s = L + (s - 1)(F + L)``.

The state is a pure function of the number of images shown, which the
training checkpoint records, so a resume continues mid-fade exactly.
A fixed-resolution run is the case ``r_0 = r_T``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressiveSchedule:
    start_resolution: int
    target_resolution: int
    fade_kimg: float
    stable_kimg: float

    def __post_init__(self) -> None:
        r0, rt = self.start_resolution, self.target_resolution
        if r0 > rt or rt % r0 or (rt // r0) & (rt // r0 - 1):
            raise ValueError(f"start resolution {r0} must be the target {rt} divided by a power of two")
        if self.fade_kimg <= 0 or self.stable_kimg < 0:
            raise ValueError("fade_kimg must be positive and stable_kimg non-negative")

    @property
    def stages(self) -> int:
        return (self.target_resolution // self.start_resolution).bit_length() - 1

    def state(self, images_seen: int) -> tuple[int, float]:
        """``(resolution, alpha)`` after ``images_seen`` training images."""
        kimg = images_seen / 1000.0
        t = kimg - self.stable_kimg
        if self.stages == 0 or t < 0:
            return self.start_resolution, 1.0
        period = self.fade_kimg + self.stable_kimg
        stage = min(int(t // period) + 1, self.stages)
        into = t - (stage - 1) * period
        alpha = min(into / self.fade_kimg, 1.0)
        return self.start_resolution * 2**stage, alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
