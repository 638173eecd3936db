"""Rendering speed of the phantom radiographs.

    python -m bench.phantom --resolutions 64 128 256 --batch 64 --repeats 3

For each resolution it renders ``--batch`` images of real CheXpert label
rows (``phantom`` domain, or ``--domain``) with
:func:`datasets.phantoms.render.render_batch` ``--repeats`` times after one
warm-up batch, and reports the best batch in images/s, with the time of one
``PhantomDataset.__getitem__`` (batch of one) for comparison. Runs on the CPU
with torch's current thread count (``--threads`` sets it), or on ``--device``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from datasets.label_tables import read_chexpert_table, read_nih_table
from datasets.phantoms.dataset import PhantomDataset
from datasets.phantoms.render import DOMAIN_SCHEMAS, check_resolution, render_batch
from plumbing.cli import make_parser, resolve_device, run_cli
from plumbing.errors import UserError

MAX_BATCH = 4096


def best_rate(fn: Callable[[], object], repeats: int, count: int, device: torch.device) -> float:
    """Best of ``repeats`` timed calls of ``fn`` as ``count`` items per second (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return count / best


def check_arguments(args: argparse.Namespace) -> None:
    """One-line :class:`UserError` for sizes the benchmark cannot use (before anything is printed)."""
    if not 1 <= args.batch <= MAX_BATCH:
        raise UserError(f"--batch must be from 1 to {MAX_BATCH}, not {args.batch}")
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, not {args.repeats}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, not {args.threads}")
    for res in args.resolutions:
        check_resolution(res)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.phantom", "Phantom radiographs rendered per second.",
                         example="python -m bench.phantom --resolutions 64 256")
    parser.add_argument(
        "--resolutions", type=int, nargs="+", default=[64, 128, 256], help="image sides to time (32-512)"
    )
    parser.add_argument("--batch", type=int, default=64, help=f"images per render_batch call (1 to {MAX_BATCH})")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per resolution (best is reported)")
    parser.add_argument("--domain", default="phantom", choices=sorted(DOMAIN_SCHEMAS), help="phantom domain")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--device", default="cpu", help="torch device to render on")
    args = parser.parse_args(argv)
    check_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    table = (read_chexpert_table if args.domain == "phantom" else read_nih_table)()
    rows = np.random.default_rng(0).choice(len(table), size=args.batch, replace=False)
    vectors = table.vectors[rows]
    seeds = np.arange(args.batch)
    threads = torch.get_num_threads()
    print(f"phantom rendering, domain {args.domain}, batch {args.batch}, device {device}, {threads} threads")
    print(f"{'px':>5} {'batched img/s':>14} {'ms/img':>8} {'single img/s':>13}")
    for res in args.resolutions:
        rate = best_rate(
            lambda r=res: render_batch(vectors, seeds, r, args.domain, device=device), args.repeats, args.batch, device
        )
        dataset = PhantomDataset(args.domain, resolution=res, length=8)
        single = best_rate(lambda d=dataset: [d[i] for i in range(4)], args.repeats, 4, torch.device("cpu"))
        print(f"{res:>5} {rate:>14.1f} {1000.0 / rate:>8.2f} {single:>13.1f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
