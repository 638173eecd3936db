"""``python -m datasets.verify STORE``: the full integrity check of a synthetic store.

Opens the store (the cheap check: arrays present, small arrays decoded, every
expected object listed) and then re-reads every block and compares it with
its checksum (:func:`datasets.synthetic_store.reader.verify_store`). Prints one
``ok`` line and exits 0 when every block matches; otherwise one error line
naming the first damaged blocks, exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tqdm.auto import tqdm

from plumbing.cli import make_parser, run_cli
from plumbing.errors import UserError
from plumbing.storage import add_storage_option_arg, apply_storage_options

from .synthetic_store.integrity import damage_message
from .synthetic_store.reader import open_synthetic, verify_store


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "python -m datasets.verify", "Re-read every block of a synthetic store and compare it with its checksum.",
                         example="python -m datasets.verify runs/demo/v3-Xs.zarr")
    parser.add_argument("store", help="the store: a local path or an fsspec URL")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_storage_option_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_storage_options(args.storage_option, [args.store])
    store = open_synthetic(args.store, check=False)
    total = sum(len(split) for split in store.splits.values())
    with tqdm(total=total, desc="verify", unit="img", disable=True if args.no_progress else None, leave=False) as bar:
        faults = verify_store(store, bar.update)  # the bar is cleared: only the verdict line stays
    if faults:
        raise UserError(damage_message(store.url, faults))
    sizes = ", ".join(f"{name} {len(split)}" for name, split in store.splits.items())
    print(f"ok: {store.url}: {store.n_blocks} blocks ({sizes} images) match their checksums")
    return 0


if __name__ == "__main__":
    run_cli(main)
