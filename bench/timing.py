"""Timing of training steps for the benchmarks: images per second over a stream of batches."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step: Callable[[dict[str, Any]], object], batches: Iterator[dict[str, Any]], steps: int,
                      batch_size: int, device: torch.device) -> float:
    """``steps * batch_size`` over the seconds that ``step`` takes on the next ``steps`` batches of ``batches``."""
    sync(device)
    t0 = time.perf_counter()
    for batch in itertools.islice(batches, steps):
        step(batch)
    sync(device)
    return steps * batch_size / (time.perf_counter() - t0)
