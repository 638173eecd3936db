"""Where and how a run computes: one record that every trainer and measurement receives from its command.

:class:`Runtime` holds the device, whether bf16 autocast is on (the
resolved ``--amp``, :func:`plumbing.precision.use_bf16_autocast`), the
data-loader workers, whether progress bars show and the runs folder that
initialisations such as ``ssl:RUN`` are read from. The memory layout of
images and networks is a function of the device
(:func:`plumbing.precision.memory_layout`), so it is not a field to keep in
step; trainers receive ``device`` and ``bf16`` and ask
:mod:`plumbing.precision` for the layout and the autocast context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Runtime:
    """The machine side of a run (module docstring); a command builds it once from its options."""

    device: torch.device
    bf16: bool
    workers: int
    progress: bool
    runs_dir: Path
