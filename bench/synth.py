"""Speed of GAN training and of synthetic-store generation.

    python -m bench.synth --device cpu --resolution 64 --preset tiny
    python -m bench.synth --device cuda --resolution 256 --preset paper --batch-size 64

* Training: seconds per kimg of :class:`synth.trainer.GanTrainer` steps (one G
  and one D update with ADA at p = 0.5 - so the augmentation really runs -
  lazy R1 every 16 steps, EMA) on random real batches held on the device, so
  data loading is not measured; warm-up steps are excluded. bf16 autocast
  and channels_last on CUDA.
* Generation: images per second of ``synth.generate``'s rendering path (EMA
  generator, constant noise, uint8 conversion) plus the Zarr block writes,
  for one store of ``--gen-images`` images.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch

from datasets.findings import CHEXPERT
from datasets.synthetic_store.format import GeneratorRecord, StoreAttrs, StoreLayout
from datasets.synthetic_store.writer import BlockRows, SyntheticStoreWriter, write_pending_blocks
from plumbing.cli import add_device_arg, make_parser, resolve_device, run_cli
from plumbing.errors import UserError
from plumbing.precision import use_bf16_autocast
from synth.config import TrainingConfig
from synth.export import LoadedGenerator
from synth.network_config import PRESETS, RESOLUTIONS, NetworkConfig
from synth.rendering import render, sample_latents
from synth.trainer import GanTrainer

from .rows import Row, add_rows_out_arg, append_rows, device_name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(resolution: int, batch: int) -> TrainingConfig:
    """The trainer's default configuration (``synth.train``'s option defaults) at a resolution and batch size."""
    return TrainingConfig.resolve(resolution=resolution, batch_size=batch)


def bench_training(device: torch.device, resolution: int, preset: str, batch: int, steps: int, warmup: int) -> float:
    """Seconds per kimg of training steps."""
    cfg = _config(resolution, batch)
    network = NetworkConfig.preset(preset, resolution=resolution, c_dim=len(CHEXPERT.columns))
    trainer = GanTrainer(cfg, network, CHEXPERT, device, use_bf16_autocast("auto", device))
    trainer.augment.p.fill_(0.5)
    trainer.ada = None  # keep p fixed while timing
    g = torch.Generator().manual_seed(0)
    batch_data = {
        "image": torch.rand(batch, 1, resolution, resolution, generator=g).to(device),
        "findings": (torch.rand(batch, len(CHEXPERT.columns), generator=g) < 0.2).float().to(device),
    }
    for it in range(warmup):
        trainer.step(it, batch_data)
    _sync(device)
    start = time.perf_counter()
    for it in range(warmup, warmup + steps):
        trainer.step(it, batch_data)
    _sync(device)
    return (time.perf_counter() - start) / (steps * batch / 1000)


def bench_generation(device: torch.device, resolution: int, preset: str, n: int, batch: int) -> float:
    """Images per second rendered and written into a Zarr store."""
    network = NetworkConfig.preset(preset, resolution=resolution, c_dim=len(CHEXPERT.columns))
    trainer = GanTrainer(_config(resolution, 1), network, CHEXPERT, device, amp=False)
    loaded = LoadedGenerator(trainer.G_ema, network.to_dict(), {}, list(CHEXPERT.columns), "0" * 64, "bench")
    tmp = tempfile.mkdtemp()
    try:
        layout = StoreLayout.for_resolution(resolution)
        attrs = StoreAttrs(
            version=1, setting="0s", classes=("No Finding", "Pneumothorax"),
            counts={"train": {"No Finding": n, "Pneumothorax": 0}}, resolution=resolution, c_dim=len(CHEXPERT.columns),
            condition_columns=CHEXPERT.columns, generator=GeneratorRecord(sha256="0" * 64), seed=0, truncation=1.0,
        )
        writer = SyntheticStoreWriter.open(f"{tmp}/bench.zarr", attrs=attrs, overwrite=False, layout=layout)
        cond = torch.zeros(n, len(CHEXPERT.columns))
        render(loaded, sample_latents(np.arange(batch), network.z_dim), cond[:batch], 1.0, batch, device)
        _sync(device)

        def rows(s: int, e: int) -> BlockRows:
            idx = np.arange(s, e)
            images = render(loaded, sample_latents(idx, network.z_dim), cond[s:e], 1.0, batch, device)
            return images, np.zeros(e - s, np.int64), cond[s:e].numpy(), idx.astype(np.int64)

        start = time.perf_counter()
        write_pending_blocks(writer, "train", rows)
        _sync(device)
        return n / (time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.synth", "Benchmark GAN training (s/kimg) and store generation (img/s).",
                         example="python -m bench.synth --resolution 64 --preset tiny")
    parser.add_argument("--resolution", type=int, default=64,
                        help="image size in px (trained at this size, no growing)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="network widths (synth.network_config presets)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--gen-images", type=int, default=1024, help="images generated into the store")
    parser.add_argument("--gen-batch", type=int, default=64, help="generation batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (none given: torch's choice)")
    add_device_arg(parser)
    add_rows_out_arg(parser)
    args = parser.parse_args(argv)
    if args.resolution not in RESOLUTIONS:
        raise UserError(f"--resolution must be one of {RESOLUTIONS}, not {args.resolution}")
    for option in ("batch_size", "steps", "gen_images", "gen_batch"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be positive, not {getattr(args, option)}")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        raise UserError("--warmup must be >= 0 and --threads positive")
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device: {device_name(device)}; torch {torch.__version__}; preset {args.preset}; {args.resolution} px")
    s_kimg = bench_training(device, args.resolution, args.preset, args.batch_size, args.steps, args.warmup)
    print(f"training, batch {args.batch_size}, ADA p=0.5, lazy R1: {s_kimg:.2f} s/kimg ({1000 / s_kimg:.1f} img/s)")
    ips = bench_generation(device, args.resolution, args.preset, args.gen_images, args.gen_batch)
    print(f"generation into Zarr, batch {args.gen_batch}: {ips:.1f} img/s")
    where = f"{args.preset} preset, {args.resolution} px"
    append_rows(args.rows_out, [
        Row("GAN training", f"{where}, batch {args.batch_size}, ADA p = 0.5, lazy R1", s_kimg, "s/kimg"),
        Row("generation into a store", f"{where}, batch {args.gen_batch}, {args.gen_images} images", ips, "img/s"),
    ])
    return 0


if __name__ == "__main__":
    run_cli(main)
