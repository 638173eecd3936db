"""Read speed of a synthetic Zarr store through the training loader versus PNG files.

    python -m bench.read_store --n 4096 --resolutions 64 256

For each resolution it writes ``n`` structured, noisy uint8 radiograph-like
images once into a store (through :class:`SyntheticStoreWriter`) and once as
PNG files, then reads shuffled epochs of each into float32 [0, 1] batches:

* PNG files with Pillow, one process (shuffled order, batches of 64);
* PNG files through a DataLoader (``--workers`` workers, batch 64, shuffled;
  persistent workers started before the timing);
* the store through :class:`datasets.block_loader.BlockLoader` in process
  (a read-ahead thread, and a producer thread preparing batches; then
  without the producer thread) and with ``--workers`` DataLoader workers;
* the same with the training augmentation (:mod:`datasets.augment`, batched);
* with ``--device cuda``: the block loader delivering to the GPU (uint8
  copies, float conversion and augmentation there);
* the store by random access (``SyntheticDataset.__getitems__`` over a
  shuffled sampler), the path the block loader replaces (one epoch).

A second table runs a fixed CPU workload on every batch (a stand-in for a
training step) to show how much of the loading each reader hides behind it.

Rows are measured in interleaved rounds (one epoch of each reader per round)
and report the best of ``--repeats`` rounds in images/s, with the ratio to
the PNG DataLoader. An epoch's first read is not overlapped with anything,
so short epochs understate the block loader: use ``n`` of a few thousand.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.rows import Row, add_rows_out_arg, append_rows
from datasets.block_loader import BlockLoader
from datasets.findings import CHEXPERT
from datasets.sample import to_uint8
from datasets.synthetic import SyntheticDataset, images_to_float
from datasets.synthetic_store.format import GeneratorRecord, StoreAttrs
from datasets.synthetic_store.reader import open_synthetic
from datasets.synthetic_store.writer import SyntheticStoreWriter, write_pending_blocks
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError


def test_images(n: int, resolution: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[n, 1, r, r]`` radiograph-like test images.

    Two dark elliptical "lungs" on a bright vignette, random low-frequency
    texture and pixel noise (sd 2.5 grey levels).
    """
    rng = np.random.default_rng(seed)
    r = resolution
    y, x = np.meshgrid(np.linspace(-1, 1, r, dtype=np.float32), np.linspace(-1, 1, r, dtype=np.float32), indexing="ij")
    base = 0.6 - 0.3 * (x**2 + y**2)
    lungs = (((x - 0.4) / 0.3) ** 2 + (y / 0.6) ** 2 < 1) | (((x + 0.4) / 0.3) ** 2 + (y / 0.6) ** 2 < 1)
    base = base - 0.3 * lungs
    coarse = rng.normal(0.0, 0.08, size=(n, 1, 8, 8)).astype(np.float32)
    texture = F.interpolate(torch.from_numpy(coarse), size=(r, r), mode="bicubic", align_corners=False).numpy()
    noise = rng.normal(0.0, 0.01, size=(n, 1, r, r)).astype(np.float32)
    img = base[None, None] + texture + noise
    return to_uint8(torch.from_numpy(img)).numpy()


def write_store(url: str, images: np.ndarray) -> float:
    """Write ``images`` as the train split of a store; returns images/s."""
    n, _, r, _ = images.shape
    t0 = time.perf_counter()
    attrs = StoreAttrs(
        version=1, setting="0s", classes=("No Finding", "Pneumothorax"),
        counts={"train": {"No Finding": n, "Pneumothorax": 0}}, resolution=r, c_dim=len(CHEXPERT.columns),
        condition_columns=CHEXPERT.columns, seed=0, truncation=1.0,
        generator=GeneratorRecord(sha256="benchmark", config={}, training={}, trained_on_phantoms=False),
    )
    writer = SyntheticStoreWriter.open(url, attrs=attrs, overwrite=True)
    conditions = np.zeros((n, len(CHEXPERT.columns)), np.float32)
    write_pending_blocks(
        writer, "train", lambda s, e: (images[s:e], np.zeros(e - s, np.int64), conditions[s:e], np.arange(s, e))
    )
    writer.finish()
    return n / (time.perf_counter() - t0)


def write_pngs(folder: Path, images: np.ndarray) -> tuple[list[Path], float]:
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{i:06d}.png"
        Image.fromarray(img[0]).save(path)
        paths.append(path)
    return paths, len(images) / (time.perf_counter() - t0)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class PngFiles(Dataset):
    """PNG files as float32 [1, H, W] in [0, 1] (the per-file reading a PNG data set does)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            arr = np.array(im, dtype=np.uint8)
        return images_to_float(arr[None, None], arr.shape[-1])[0]


def count_images(batches: Iterable, step: Callable[[torch.Tensor], object] | None = None) -> int:
    """Images in one epoch of ``batches``, running ``step`` on each batch's images."""
    seen = 0
    for batch in batches:
        x = batch["image"] if isinstance(batch, dict) else batch
        if step is not None:
            step(x)
        seen += x.shape[0]
    return seen


def epoch_rates(
    readers: dict[str, Callable[[], Iterable]],
    n: int,
    repeats: int,
    step: Callable[[torch.Tensor], object] | None = None,
) -> dict[str, float]:
    """Best images/s of each reader over ``repeats`` rounds; checks every image was delivered.

    A round runs one epoch of every reader in turn, so a change in the
    machine's speed during the run (shared CPUs) touches all readers alike.
    """
    best = dict.fromkeys(readers, 0.0)
    for _ in range(repeats):
        for name, batches in readers.items():
            t0 = time.perf_counter()
            seen = count_images(batches(), step)
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # batches delivered to a GPU are finished there asynchronously
            dt = time.perf_counter() - t0
            if seen != n:
                raise RuntimeError(f"{name}: an epoch delivered {seen} images, expected {n}")
            best[name] = max(best[name], n / dt)
    return best


def training_step_stand_in(resolution: int) -> Callable[[torch.Tensor], object]:
    """A fixed CPU workload per batch (a 3x3 convolution to 8 channels on a 64 px crop), like a training step."""
    conv = torch.nn.Conv2d(1, 8, 3, padding=1)
    size = min(64, resolution)

    @torch.no_grad()
    def step(x: torch.Tensor) -> torch.Tensor:
        return conv(x[..., :size, :size])

    return step


def bench_resolution(
    r: int, n: int, batch: int, workers: int, repeats: int, tmp: Path, device: torch.device
) -> list[tuple[str, float]]:
    images = test_images(n, r)
    url = str(tmp / f"store_{r}.zarr")
    zarr_write = write_store(url, images)
    paths, png_write = write_pngs(tmp / f"png_{r}", images)
    png = PngFiles(paths)
    ds = SyntheticDataset(open_synthetic(url), "train", resolution=r)
    rows: list[tuple[str, float]] = [
        ("write: store (writer, incl. verification)", zarr_write),
        ("write: PNG files", png_write),
    ]
    raw = images.nbytes
    print(f"{r}x{r}: stored bytes / raw bytes: store {folder_bytes(Path(url) / 'train' / 'images') / raw:.2f}, "
          f"PNG {folder_bytes(tmp / f'png_{r}') / raw:.2f}")

    def png_single() -> Iterable:
        order = np.random.default_rng(0).permutation(n)
        for b in range(0, n, batch):
            yield torch.stack([png[int(i)] for i in order[b : b + batch]])

    augmented = SyntheticDataset(open_synthetic(url), "train", resolution=r, augment=True)
    png_loader = DataLoader(png, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    next(iter(png_loader))  # start the persistent workers outside the timing
    epochs = iter(range(10**6))

    def block_loader(source: SyntheticDataset = ds, **options: Any) -> Callable[[], Iterable]:
        loader = BlockLoader(source, batch, seed=0, **options)

        def epoch() -> Iterable:
            loader.set_epoch(next(epochs))
            return loader

        return epoch

    readers = {
        "read: PNG, 1 process": png_single,
        f"read: PNG, DataLoader {workers} workers": lambda: png_loader,
        "read: store, block loader, in process (read-ahead + producer threads)": block_loader(),
        "read: store, block loader, in process, no producer thread": block_loader(prefetch=0),
        f"read: store, block loader, DataLoader {workers} workers": block_loader(num_workers=workers),
        "read: store, block loader, in process, + training augmentation": block_loader(augmented),
    }
    if device.type != "cpu":
        readers[f"read: store, block loader -> {device.type} (uint8 copy, float there)"] = block_loader(device=device)
        readers[f"read: store, block loader -> {device.type}, + training augmentation there"] = block_loader(
            augmented, device=device
        )
    rows += list(epoch_rates(readers, n, repeats).items())
    random_access = DataLoader(ds, batch_size=batch, shuffle=True)
    random_row = {"read: store, random access (__getitems__), 1 process": lambda: random_access}
    rows += list(epoch_rates(random_row, n, 1).items())

    step = training_step_stand_in(r)
    in_memory = torch.from_numpy(images[:batch]).float() / 255.0
    step_alone = [in_memory[: min(batch, n - b)] for b in range(0, n, batch)]
    with_step = {
        "step alone (one batch held in memory)": lambda: step_alone,
        f"step + PNG, DataLoader {workers} workers": lambda: png_loader,
        "step + store, block loader, in process": block_loader(),
        "step + store, block loader, no producer thread": block_loader(prefetch=0),
    }
    rows += list(epoch_rates(with_step, n, repeats, step).items())
    return rows


def check_arguments(args: argparse.Namespace) -> None:
    """One-line :class:`UserError` for sizes the benchmark cannot run with."""
    sizes = {"--n": [args.n], "--resolutions": args.resolutions, "--batch-size": [args.batch_size],
             "--repeats": [args.repeats], "--threads": [args.threads]}
    bad = [name for name, values in sizes.items() if any(v < 1 for v in values)]
    if bad:
        raise UserError(f"{', '.join(bad)} must be positive (got {', '.join(str(sizes[b]) for b in bad)})")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")


def main(argv: Sequence[str] | None = None) -> int:
    parser: argparse.ArgumentParser = make_parser("python -m bench.read_store", __doc__.splitlines()[0],
                                                  example="python -m bench.read_store --n 4096 --resolutions 64 256")
    parser.add_argument("--n", type=int, default=4096, help="images per resolution")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256], help="image sizes in px")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the multi-process rows")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per row (the best is reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the main process (DataLoader workers use 1)")
    add_device_arg(parser)
    add_rows_out_arg(parser)
    args = parser.parse_args(argv)
    check_arguments(args)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for r in args.resolutions:
            rows = bench_resolution(r, args.n, args.batch_size, args.workers, args.repeats, Path(tmp), device)
            refs = {"read": f"read: PNG, DataLoader {args.workers} workers",
                    "step": f"step + PNG, DataLoader {args.workers} workers"}
            rates = dict(rows)
            print(f"\n{args.n} images {r}x{r} uint8, batch {args.batch_size}")
            print(f"| {'layout and access':<70} | {'images/s':>9} | {'x PNG DataLoader':>16} |")
            print(f"|{'-' * 72}|{'-' * 11}|{'-' * 18}|")
            for name, rate in rows:
                ref = refs.get(name.split(":")[0].split(" ")[0])
                ratio = f"{rate / rates[ref]:.2f}" if ref and "alone" not in name else ""
                print(f"| {name:<70} | {rate:>9.0f} | {ratio:>16} |")
            append_rows(args.rows_out, [
                Row("store reading", f"{r} px, {name.removeprefix('read: ')}", rate, "img/s")
                for name, rate in rows if name.startswith("read:")
            ])
    return 0


if __name__ == "__main__":
    run_cli(main)
