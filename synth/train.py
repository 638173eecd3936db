"""``python -m synth.train``: train the conditional GAN on a registered data set.

One Ignite iteration is one generator step and one discriminator step on a
minibatch of ``B`` real images with their condition vectors (the data set's
finding vectors through :meth:`FindingSchema.condition`):

* G: ``L_G = softplus(-D(A(G(z, c)), c))`` (non-saturating logistic), plus
  the path-length penalty every 4 steps when ``--pl-weight`` > 0;
* D: ``L_D = softplus(D(A(G(z, c)), c)) + softplus(-D(A(x), c))`` on the
  fakes of the G step (detached; saves a generator forward), plus lazy R1
  every ``k = --r1-interval`` steps: ``k * gamma/2 * ||grad_x D(A(x), c)||^2``,
  folded into that step's loss (so Adam keeps its plain lr and betas (0, 0.99));
* ``A`` is the ADA pipeline; its probability moves toward
  ``E[sign D(A(x))] = --ada-target`` every 4 steps;
* the EMA generator follows ``G`` with a half-life of ``--ema-kimg``.

Progressive growing (``--start-resolution`` below ``--resolution``) follows
:class:`synth.schedule.ProgressiveSchedule`; the real images are
area-downsampled to the active resolution and, during a fade, blended as the
generator's output is (:func:`synth.networks.fade_images`). Every random draw of step ``t``
comes from a generator seeded by ``(seed, t)`` and the minibatch order from
:class:`plumbing.sampling.ResumableBatchSampler`, so on the CPU ``k`` steps,
a resume and ``k`` more steps equal ``2k`` uninterrupted steps exactly.

On a GPU the networks are channels_last and, with ``--amp auto`` on a GPU
with native bf16 (:mod:`plumbing.precision`), run under bf16 autocast (which
parts stay fp32: :mod:`synth.networks`).

Every ``--snapshot-kimg`` the run folder receives an atomic checkpoint, a
sample grid (fixed latents, one row per condition) and
``generator.safetensors`` (the EMA generator, what ``synth.generate`` reads).
"""

from __future__ import annotations

import contextlib
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader
from torchvision.utils import save_image

from datasets.cache import CachedDataset
from datasets.findings import FindingSchema
from datasets.registry import build_dataset, get_spec, names
from plumbing.cli import add_device_arg, add_runs_dir_arg, default_workers, make_parser, resolve_device, run_cli
from plumbing.errors import UserError
from plumbing.files import atomic_path, write_json_atomic
from plumbing.precision import AMP_CHOICES, use_bf16_autocast
from plumbing.sampling import ResumableBatchSampler
from plumbing.seeding import derive_seed, generator
from plumbing.training import (
    TrainingDiverged,
    attach_training_handlers,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    restore,
)

from .augment import AdaController, AugmentPipe
from .export import export_generator
from .losses import d_logistic_loss, ema_beta, ema_update, g_nonsaturating_loss, path_length_penalty, r1_penalty
from .networks import PRESETS, RESOLUTIONS, Discriminator, Generator, NetworkConfig, build_networks, fade_images
from .schedule import ProgressiveSchedule

GRID_FINDINGS = ("Cardiomegaly", "Pneumothorax", "Pneumonia", "Pleural Effusion", "Effusion", "Edema", "Support Devices")
"""Findings shown one per row of the sample grids (those the schema has), after the all-zero row."""

PL_INTERVAL = 4


class RunState:
    """The configuration of a run and the regulariser state, saved in every checkpoint."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.iteration = 0
        self.pl_mean = torch.zeros(())
        self.pl_resolution = 0

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config, "iteration": self.iteration, "pl_mean": self.pl_mean, "pl_resolution": self.pl_resolution}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self.iteration = int(state["iteration"])
        self.pl_mean = state["pl_mean"]
        self.pl_resolution = int(state["pl_resolution"])


def grid_conditions(schema: FindingSchema) -> torch.Tensor:
    """One condition per grid row: all zero (no finding), then single findings of :data:`GRID_FINDINGS`."""
    rows = [torch.zeros(len(schema.columns))]
    for name in GRID_FINDINGS:
        if name in schema.columns:
            row = torch.zeros(len(schema.columns))
            row[schema.index(name)] = 1.0
            rows.append(row)
    return torch.stack(rows)


def build_parser():  # noqa: ANN201 - argparse.ArgumentParser
    parser = make_parser("python -m synth.train", "Train the class-conditional StyleGAN2-ADA-style GAN on a data set.")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="phantom", help=f"registered data set with finding vectors ({', '.join(names())})")
    data.add_argument("--data-root", default=None, help="root of a real data set (else its environment variable)")
    data.add_argument("--data-length", type=int, default=None, help="number of images: phantom data set size, or a deterministic subset of a real one")
    data.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (none given: 0 on a CPU, which trains on every core; min(8, CPUs - 1) with a GPU)")
    data.add_argument("--cache", action="store_true", help="read the whole data set into memory once (uint8) before training; worth it for phantoms, which are costly to draw")
    net = parser.add_argument_group("networks")
    net.add_argument("--resolution", type=int, default=64, help="target resolution")
    net.add_argument("--start-resolution", type=int, default=None, help="progressive growing from this resolution (default: fixed resolution)")
    net.add_argument("--fade-kimg", type=float, default=2.0, help="kimg of fade-in per new resolution")
    net.add_argument("--stable-kimg", type=float, default=2.0, help="kimg at each resolution before the next fades in")
    net.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="network widths: tiny (CPU) or paper (StyleGAN2-ADA paper256)")
    net.add_argument("--channel-base", type=int, default=None, help="override the preset's channel_base")
    net.add_argument("--channel-max", type=int, default=None, help="override the preset's channel_max")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--kimg", type=float, default=10.0, help="training length in thousands of real images shown")
    opt.add_argument("--batch-size", type=int, default=16, help="minibatch size")
    opt.add_argument("--lr", type=float, default=0.0025, help="Adam learning rate of G and D")
    opt.add_argument("--gamma", type=float, default=None, help="R1 weight (default: 0.0002 * resolution^2 / batch, as StyleGAN2-ADA 'auto')")
    opt.add_argument("--r1-interval", type=int, default=16, help="lazy R1 every this many D steps")
    opt.add_argument("--pl-weight", type=float, default=0.0, help="path-length regularisation weight (0 = off; StyleGAN2 uses 2)")
    opt.add_argument("--mixing", type=float, default=0.9, help="style-mixing probability")
    opt.add_argument("--ema-kimg", type=float, default=None, help="EMA half-life in kimg (default: batch * 10 / 32)")
    opt.add_argument("--no-ada", action="store_true", help="disable adaptive discriminator augmentation")
    opt.add_argument("--ada-target", type=float, default=0.6, help="ADA target of E[sign D(real)]")
    opt.add_argument("--ada-kimg", type=float, default=100.0, help="kimg for the ADA probability to move from 0 to 1")
    opt.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="bf16 autocast (auto: on for GPUs with native bf16)")
    run = parser.add_argument_group("run")
    run.add_argument("--name", default=None, help="run folder name (default: gan-<data>-<resolution>)")
    run.add_argument("--resume", action="store_true", help="continue the run in the run folder from its last checkpoint")
    run.add_argument("--snapshot-kimg", type=float, default=1.0, help="checkpoint, sample grid and generator export every this many kimg")
    run.add_argument("--seed", type=int, default=0, help="random seed")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runs_dir_arg(parser)
    add_device_arg(parser)
    return parser


def training_config(args: Any) -> dict[str, Any]:
    """The options that define the run (saved in checkpoints; fixed across resumes except ``kimg``)."""
    keys = (
        "data", "data_length", "resolution", "start_resolution", "fade_kimg", "stable_kimg", "batch_size", "lr",
        "gamma", "r1_interval", "pl_weight", "mixing", "ema_kimg", "no_ada", "ada_target", "ada_kimg", "seed", "cache",
        "snapshot_kimg",
    )
    cfg = {k: getattr(args, k) for k in keys}
    cfg["start_resolution"] = cfg["start_resolution"] or args.resolution
    cfg["gamma"] = cfg["gamma"] if cfg["gamma"] is not None else 0.0002 * args.resolution**2 / args.batch_size
    cfg["ema_kimg"] = cfg["ema_kimg"] if cfg["ema_kimg"] is not None else args.batch_size * 10 / 32
    return cfg


def _adam(params: Any, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99), eps=1e-8)


class GanTrainer:
    """Networks, optimisers and the per-iteration update of one GAN run."""

    def __init__(self, cfg: dict[str, Any], network: NetworkConfig, schema: FindingSchema, device: torch.device, amp: bool) -> None:
        self.cfg, self.schema, self.device, self.amp = cfg, schema, device, amp
        torch.manual_seed(derive_seed(cfg["seed"], "init"))
        G, D = build_networks(network)
        # channels_last feeds the GPU's tensor cores without layout transposes; CPUs keep NCHW
        layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.G: Generator = G.to(device, memory_format=layout)
        self.D: Discriminator = D.to(device, memory_format=layout)
        self.G_ema: Generator = Generator(network).to(device, memory_format=layout).eval().requires_grad_(False)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.opt_G = _adam(self.G.parameters(), cfg["lr"])
        self.opt_D = _adam(self.D.parameters(), cfg["lr"])
        self.augment = AugmentPipe(p=0.0).to(device)
        self.ada = None if cfg["no_ada"] else AdaController(
            self.augment, batch_size=cfg["batch_size"], target=cfg["ada_target"], ada_kimg=cfg["ada_kimg"]
        )
        self.schedule = ProgressiveSchedule(cfg["start_resolution"], cfg["resolution"], cfg["fade_kimg"], cfg["stable_kimg"])
        self.state = RunState({})

    def objects(self) -> dict[str, Any]:
        """Everything a checkpoint holds, by name."""
        objs: dict[str, Any] = {
            "G": self.G, "D": self.D, "G_ema": self.G_ema, "opt_G": self.opt_G, "opt_D": self.opt_D,
            "augment": self.augment, "run": self.state,
        }
        if self.ada is not None:
            objs["ada"] = self.ada
        return objs

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def conditions(self, findings: torch.Tensor) -> torch.Tensor:
        """Condition vectors of a batch of finding vectors (:meth:`FindingSchema.condition`)."""
        return torch.from_numpy(self.schema.condition(findings.cpu().numpy())).to(self.device)

    def step(self, iteration: int, batch: dict[str, Any]) -> dict[str, float]:
        """One G and one D update; ``iteration`` counts from 0."""
        cfg, B = self.cfg, self.cfg["batch_size"]
        res, alpha = self.schedule.state(iteration * B)
        gen = generator(cfg["seed"], "step", iteration, device=self.device)
        torch.manual_seed(derive_seed(cfg["seed"], "global", iteration))  # augmentation and noise draws

        real = batch["image"].to(self.device, non_blocking=True) * 2.0 - 1.0
        if real.shape[-1] != res:
            real = F.interpolate(real, size=(res, res), mode="area")
        real = fade_images(real, alpha)
        c = self.conditions(batch["findings"])
        z = torch.randn(real.shape[0], self.G.z_dim, device=self.device, generator=gen)

        # Generator step.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        with self._autocast():
            fake = self.G(z, c, resolution=res, alpha=alpha, mixing_prob=cfg["mixing"], generator=gen)
            loss_g = g_nonsaturating_loss(self.D(self.augment(fake), c, alpha=alpha))
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        pl = torch.zeros(())
        if cfg["pl_weight"] > 0 and iteration % PL_INTERVAL == 0:
            half = max(1, real.shape[0] // 2)
            ws = self.G.compute_ws(z[:half], c[:half], resolution=res, generator=gen)
            img = self.G.synthesis(ws, resolution=res, alpha=alpha, generator=gen)
            if self.state.pl_resolution != res:  # the running mean depends on the resolution
                self.state.pl_mean, self.state.pl_resolution = torch.zeros(()), res
            out = path_length_penalty(img, ws, self.state.pl_mean.to(self.device), generator=gen)
            self.state.pl_mean = out.pl_mean.detach().cpu()
            (out.penalty * cfg["pl_weight"] * PL_INTERVAL).backward()
            pl = out.penalty.detach()
        self.opt_G.step()

        # Discriminator step.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with self._autocast():
            fake_logits = self.D(self.augment(fake.detach()), c, alpha=alpha)
            real_logits = self.D(self.augment(real), c, alpha=alpha)
            loss_d = d_logistic_loss(real_logits, fake_logits)
        if self.ada is not None:
            self.ada.observe(real_logits)
        r1 = torch.zeros((), device=self.device)
        if cfg["r1_interval"] > 0 and iteration % cfg["r1_interval"] == 0:
            real_r1 = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(self.augment(real_r1), c, alpha=alpha), real_r1, cfg["gamma"])
            loss_d = loss_d + r1 * cfg["r1_interval"]
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()

        ema_update(self.G_ema, self.G, ema_beta(B, cfg["ema_kimg"], cur_nimg=(iteration + 1) * B, rampup=0.05))
        if self.ada is not None:
            self.ada.step()
        return {
            "loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()), "r1": float(r1.detach()), "pl": float(pl),
            "ada_p": float(self.augment.p), "resolution": float(res), "alpha": float(alpha),
        }

    @torch.no_grad()
    def sample_grid(self, path: Path, iteration: int, columns: int = 8) -> None:
        """Fixed latents (columns) x conditions (rows) from the EMA generator, as a PNG."""
        res, alpha = self.schedule.state(iteration * self.cfg["batch_size"])
        conds = grid_conditions(self.schema).to(self.device)
        z = torch.randn(columns, self.G.z_dim, generator=generator(self.cfg["seed"], "grid")).to(self.device)
        zz = z.repeat(len(conds), 1)
        cc = conds.repeat_interleave(columns, dim=0)
        images = self.G_ema(zz, cc, resolution=res, alpha=alpha, noise_mode="const")
        with atomic_path(path) as tmp:
            save_image(images.float().clamp(-1, 1), tmp, nrow=columns, normalize=True, value_range=(-1, 1), format="png")


def _network_config(args: Any, schema: FindingSchema, channels: int) -> NetworkConfig:
    overrides: dict[str, Any] = {"resolution": args.resolution, "c_dim": len(schema.columns), "img_channels": channels}
    if args.channel_base is not None:
        overrides["channel_base"] = args.channel_base
    if args.channel_max is not None:
        overrides["channel_max"] = args.channel_max
    return NetworkConfig.preset(args.preset, **overrides)


def _dataset(cfg: dict[str, Any], data_root: str | None) -> Any:
    spec = get_spec(cfg["data"])
    if spec.schema is None:
        raise UserError(f"synth.train needs finding vectors as conditions; {spec.name} has none")
    options: dict[str, Any] = {}
    if cfg["data_length"] is not None:
        options["length" if spec.env_var is None else "max_samples"] = cfg["data_length"]
    return spec, build_dataset(spec.name, root=data_root, split="train", resolution=cfg["resolution"], **options)


def _validate(args: Any) -> None:
    """One-line errors for option values the trainer cannot use."""
    checks = [
        (args.resolution in RESOLUTIONS, f"--resolution must be one of {RESOLUTIONS}"),
        (args.start_resolution is None or 4 <= args.start_resolution <= args.resolution,
         "--start-resolution must be at least 4 and at most --resolution"),
        (args.batch_size >= 1 and args.kimg > 0 and args.snapshot_kimg > 0, "--batch-size, --kimg and --snapshot-kimg must be positive"),
        (args.lr > 0, "--lr must be positive"),
        ((args.workers or 0) >= 0 and args.r1_interval >= 0, "--workers and --r1-interval must be >= 0"),
        (args.fade_kimg > 0 and args.stable_kimg >= 0, "--fade-kimg must be positive and --stable-kimg >= 0"),
        (args.gamma is None or args.gamma >= 0, "--gamma must be >= 0"),
        (args.pl_weight >= 0, "--pl-weight must be >= 0"),
        (0.0 <= args.mixing <= 1.0, "--mixing must lie in [0, 1]"),
        (args.ema_kimg is None or args.ema_kimg > 0, "--ema-kimg must be positive"),
        (-1.0 <= args.ada_target <= 1.0 and args.ada_kimg > 0, "--ada-target must lie in [-1, 1] and --ada-kimg be positive"),
        (args.data_length is None or args.data_length >= 1, "--data-length must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    _validate(args)
    name = args.name or f"gan-{args.data}-{args.resolution}"
    run_dir = prepare_run_dir(args.runs_dir, name, args.resume)
    checkpoint = load_checkpoint(latest_checkpoint(run_dir)) if args.resume else None
    if checkpoint is not None and not isinstance(checkpoint.get("run"), dict):
        raise UserError(f"{latest_checkpoint(run_dir)} is not a synth.train checkpoint")
    if checkpoint is not None:
        print("resuming: the run's saved settings apply; only --kimg, --workers and --device are taken from this command", file=sys.stderr)
        saved = checkpoint["run"]["config"]
        cfg, network = saved["training"], NetworkConfig.from_dict(saved["network"])
        cfg["kimg"] = args.kimg
    else:
        cfg = training_config(args) | {"kimg": args.kimg}
    try:
        ProgressiveSchedule(cfg["start_resolution"], cfg["resolution"], cfg["fade_kimg"], cfg["stable_kimg"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    spec, dataset = _dataset(cfg, args.data_root)
    if cfg.get("cache", args.cache):
        dataset = CachedDataset(dataset, progress=not args.no_progress)
    if checkpoint is None:
        network = _network_config(args, spec.schema, spec.channels)
    trainer = GanTrainer(cfg, network, spec.schema, device, use_bf16_autocast(args.amp, device))
    command = "python -m synth.train " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    trainer.state.config = {
        "network": network.to_dict(),
        "training": cfg,
        "condition_columns": list(spec.schema.columns),
        "augment": trainer.augment.spec.to_dict(),
        "command": command,
    }
    if checkpoint is not None:
        restore(trainer.objects(), checkpoint)
        trainer.state.config["training"]["kimg"] = args.kimg
        trainer.state.config.setdefault("resumed_with", []).append(command)
    start = trainer.state.iteration
    B = cfg["batch_size"]
    total = math.ceil(cfg["kimg"] * 1000 / B)
    if start >= total:
        raise UserError(f"the run already trained {start * B / 1000:.2f} kimg; pass a larger --kimg to continue")
    snapshot = max(1, round(cfg.get("snapshot_kimg", args.snapshot_kimg) * 1000 / B))
    write_json_atomic(run_dir / "config.json", trainer.state.config)

    workers = args.workers if args.workers is not None else default_workers(device)
    loader = DataLoader(
        dataset,
        batch_sampler=ResumableBatchSampler(len(dataset), B, cfg["seed"], start=start),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def process(engine: Engine, batch: dict[str, Any]) -> dict[str, float]:
        out = trainer.step(engine.state.iteration - 1, batch)
        trainer.state.iteration = engine.state.iteration
        return out

    engine = Engine(process)

    @engine.on(Events.STARTED)
    def _resume_position(eng: Engine) -> None:
        eng.state.iteration = start
        eng.state.epoch = start // snapshot

    def _snapshot(eng: Engine) -> None:
        it = eng.state.iteration
        trainer.sample_grid(run_dir / "samples" / f"grid-{it * B / 1000:08.2f}kimg.png", it)
        active, alpha = trainer.schedule.state(it * B)
        training = dict(
            trainer.state.config["training"],
            command=trainer.state.config["command"],
            resumed_with=trainer.state.config.get("resumed_with", []),
            iteration=it,
            kimg_done=it * B / 1000,
            active_resolution=active,
            alpha=alpha,
            trained_on_phantoms=spec.env_var is None,
        )
        export_generator(run_dir / "generator.safetensors", trainer.G_ema, network.to_dict(), training, list(spec.schema.columns))

    attach_training_handlers(
        engine,
        run_dir=run_dir,
        to_save=trainer.objects(),
        checkpoint_every=snapshot,
        progress=not args.no_progress,
        on_checkpoint=_snapshot,
    )
    print(f"training {name}: {total - start} iterations of {B} images at {network.resolution} px on {device} -> {run_dir}", file=sys.stderr)
    try:
        engine.run(loader, max_iters=total, epoch_length=snapshot)
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    return 0


if __name__ == "__main__":
    run_cli(main)
