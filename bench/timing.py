"""Timing of training steps for the benchmarks: images per second over a stream of batches, and its options."""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from models.backbones import backbone_names
from plumbing.errors import UserError

SOURCES = ("store", "phantom")
"""Where the images come from: a synthetic store (block loader) or phantoms rendered on the fly."""


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


def alone_and_through(step: Callable[[dict[str, Any]], object], fixed: dict[str, Any],
                      stream: Iterator[dict[str, Any]], *, steps: int, warmup: int, repeats: int, batch_size: int,
                      device: torch.device) -> tuple[float, float]:
    """(images/s of ``step`` on the ``fixed`` batch, images/s on the batches of ``stream``), the best of ``repeats``
    interleaved rounds of ``steps`` steps each, after ``warmup`` untimed steps of each."""
    again = itertools.repeat(fixed)
    images_per_second(step, again, warmup, batch_size, device)
    images_per_second(step, stream, warmup, batch_size, device)
    rounds = [(images_per_second(step, again, steps, batch_size, device),
               images_per_second(step, stream, steps, batch_size, device)) for _ in range(repeats)]
    return max(r[0] for r in rounds), max(r[1] for r in rounds)


def add_data_path_args(parser: argparse.ArgumentParser, *, steps: int, warmup: int) -> None:
    """The options of a benchmark of a training step through its data path beside the step alone."""
    parser.add_argument("--source", choices=SOURCES, default="store",
                        help="store: a synthetic Zarr store through the block loader; phantom: rendered on the fly")
    parser.add_argument("--backbone", choices=backbone_names(), default="resnet18", help="backbone architecture")
    parser.add_argument("--image-size", type=int, default=64, help="square input size in pixels")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps of each measurement in each round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both measurements, interleaved (best kept)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps of each before the first round")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (none given: 0 on a CPU)")


def check_sizes(args: argparse.Namespace, positive: tuple[str, ...]) -> None:
    """One :class:`UserError` line for an option of ``positive`` below 1, or ``--warmup`` / ``--workers`` below 0."""
    for option in positive:
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be positive, not {getattr(args, option)}")
    if args.warmup < 0 or (args.workers is not None and args.workers < 0):
        raise UserError("--warmup and --workers must be >= 0")
