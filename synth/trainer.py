"""The GAN trainer: networks, optimisers, one training iteration and the training loop.

The configuration it trains with is :class:`synth.config.TrainingConfig`;
:func:`training_dataset` and :func:`network_config` build what a run needs
and :func:`train` runs it with the shared engine set-up of :mod:`plumbing.training`.

One iteration (:meth:`GanTrainer.step`) is one generator step and one
discriminator step on a minibatch of ``B`` real images with their condition
vectors (the data set's finding vectors through :meth:`FindingSchema.condition`):

* G: ``L_G = softplus(-D(A(G(z, c)), c))`` (non-saturating logistic), plus
  the path-length penalty every 4 steps when ``pl_weight`` > 0;
* D: ``L_D = softplus(D(A(G(z, c)), c)) + softplus(-D(A(x), c))`` on the
  fakes of the G step (detached; saves a generator forward), plus lazy R1
  every ``k = r1_interval`` steps: ``k * gamma/2 * ||grad_x D(A(x), c)||^2``,
  folded into that step's loss (so Adam keeps its plain lr and betas (0, 0.99));
* ``A`` is the ADA pipeline; its probability moves toward
  ``E[sign D(A(x))] = ada_target`` every 4 steps;
* the EMA generator follows ``G`` with a half-life of ``ema_kimg``.

Progressive growing (``start_resolution`` below ``resolution``) follows
:class:`synth.schedule.ProgressiveSchedule`; the real images are
area-downsampled to the active resolution and, during a fade, blended as the
generator's output is (:func:`synth.networks.fade_images`). Every random draw of
step ``t`` comes from a generator seeded by ``(seed, t)``, so on the CPU ``k``
steps, a resume and ``k`` more steps equal ``2k`` uninterrupted steps exactly.

Under several processes (``torchrun``, :mod:`plumbing.distributed`) each rank
takes its part of every global batch of ``batch_size`` images, and the
gradients of each update are averaged over ranks by one all-reduce
(:func:`plumbing.distributed.average_gradients`) instead of DDP, whose hooks
do not fit the double-backward passes of R1 and the path length; the ADA
statistics and the path-length mean are reduced over ranks too, so the
networks stay identical on every rank. Each rank draws its own latents,
noise and augmentations (seeded by ``(seed, t, rank)``), and the minibatch
standard deviation of D groups the images of one rank, so a run on ``N``
processes follows the single-process run in distribution, not bit for bit.

On a GPU the networks are channels_last and, with bf16 autocast on a GPU
with native bf16 (:mod:`plumbing.precision`), run under autocast (which
parts stay fp32: :mod:`synth.networks`).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, Dataset
from torchvision.utils import save_image

from datasets.findings import FindingSchema
from datasets.registry import build_dataset, get_spec
from datasets.spec import DataSetSpec
from plumbing.distributed import (
    average_gradients,
    broadcast_module,
    local_batch_size,
    mean_over_ranks,
    mean_values_over_ranks,
    rank,
    world_size,
)
from plumbing.errors import UserError
from plumbing.files import atomic_path
from plumbing.sampling import ResumableBatchSampler
from plumbing.seeding import derive_seed, generator
from plumbing.training import TrainingDiverged, attach_training_handlers

from .augment import AdaController, AugmentPipe
from .config import TrainingConfig
from .export import export_generator, training_metadata
from .losses import d_logistic_loss, ema_beta, ema_update, g_nonsaturating_loss, path_length_penalty, r1_penalty
from .networks import Discriminator, Generator, NetworkConfig, build_networks, fade_images

GRID_FINDINGS = (
    "Cardiomegaly", "Pneumothorax", "Pneumonia", "Pleural Effusion", "Effusion", "Edema", "Support Devices",
)
"""Findings shown one per row of the sample grids (those the schema has), after the all-zero row."""

PL_INTERVAL = 4


class RunState:
    """The record of a run (configuration, command, resume commands) and the regulariser state, checkpointed."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.iteration = 0
        self.pl_mean = torch.zeros(())
        self.pl_resolution = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "iteration": self.iteration, "pl_mean": self.pl_mean,
            "pl_resolution": self.pl_resolution,
        }

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


def training_spec(data: str) -> DataSetSpec:
    """The registered data set ``data``, which must have finding vectors (the GAN's conditions)."""
    spec = get_spec(data)
    if spec.schema is None:
        raise UserError(f"synth.train needs finding vectors as conditions; {spec.name} has none")
    return spec


def training_dataset(cfg: TrainingConfig, data_root: str | None) -> Dataset:
    """The training split of ``cfg.data`` at the target resolution (``data_length`` images, when given)."""
    spec = training_spec(cfg.data)
    options: dict[str, Any] = {}
    if cfg.data_length is not None:
        options["length" if spec.env_var is None else "max_samples"] = cfg.data_length
    return build_dataset(spec.name, root=data_root, split="train", resolution=cfg.resolution, **options)


def network_config(
    preset: str, resolution: int, c_dim: int, channels: int, channel_base: int | None, channel_max: int | None
) -> NetworkConfig:
    """The networks of a new run: a preset (:data:`synth.networks.PRESETS`) with the given overrides."""
    overrides: dict[str, Any] = {"resolution": resolution, "c_dim": c_dim, "img_channels": channels}
    if channel_base is not None:
        overrides["channel_base"] = channel_base
    if channel_max is not None:
        overrides["channel_max"] = channel_max
    return NetworkConfig.preset(preset, **overrides)


def _adam(params: Any, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99), eps=1e-8)


class GanTrainer:
    """Networks, optimisers and the per-iteration update of one GAN run."""

    def __init__(
        self, cfg: TrainingConfig, network: NetworkConfig, schema: FindingSchema, device: torch.device, amp: bool
    ) -> None:
        self.cfg, self.network, self.schema, self.device, self.amp = cfg, network, schema, device, amp
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        G, D = build_networks(network)
        # channels_last feeds the GPU's tensor cores without layout transposes; CPUs keep NCHW
        layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.G: Generator = G.to(device, memory_format=layout)
        self.D: Discriminator = D.to(device, memory_format=layout)
        self.G_ema: Generator = Generator(network).to(device, memory_format=layout).eval().requires_grad_(False)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.opt_G = _adam(self.G.parameters(), cfg.lr)
        self.opt_D = _adam(self.D.parameters(), cfg.lr)
        self.augment = AugmentPipe(p=0.0).to(device)
        self.ada = None if cfg.no_ada else AdaController(
            self.augment, batch_size=cfg.batch_size, target=cfg.ada_target, ada_kimg=cfg.ada_kimg
        )
        self.schedule = cfg.schedule()
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
        cfg, B = self.cfg, self.cfg.batch_size
        res, alpha = self.schedule.state(iteration * B)
        per_rank = (rank(),) if world_size() > 1 else ()
        gen = generator(cfg.seed, "step", iteration, *per_rank, device=self.device)
        torch.manual_seed(derive_seed(cfg.seed, "global", iteration, *per_rank))  # augmentation and noise draws

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
            fake = self.G(z, c, resolution=res, alpha=alpha, mixing_prob=cfg.mixing, generator=gen)
            loss_g = g_nonsaturating_loss(self.D(self.augment(fake), c, alpha=alpha))
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        pl = torch.zeros(())
        if cfg.pl_weight > 0 and iteration % PL_INTERVAL == 0:
            half = max(1, real.shape[0] // 2)
            ws = self.G.compute_ws(z[:half], c[:half], resolution=res, generator=gen)
            img = self.G.synthesis(ws, resolution=res, alpha=alpha, generator=gen)
            if self.state.pl_resolution != res:  # the running mean depends on the resolution
                self.state.pl_mean, self.state.pl_resolution = torch.zeros(()), res
            out = path_length_penalty(img, ws, self.state.pl_mean.to(self.device), generator=gen)
            self.state.pl_mean = mean_over_ranks(out.pl_mean.detach()).cpu()
            (out.penalty * cfg.pl_weight * PL_INTERVAL).backward()
            pl = out.penalty.detach()
        average_gradients(self.G.parameters())
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
        if cfg.r1_interval > 0 and iteration % cfg.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(self.augment(real_r1), c, alpha=alpha), real_r1, cfg.gamma)
            loss_d = loss_d + r1 * cfg.r1_interval
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        average_gradients(self.D.parameters())
        self.opt_D.step()

        ema_update(self.G_ema, self.G, ema_beta(B, cfg.ema_kimg, cur_nimg=(iteration + 1) * B, rampup=0.05))
        if self.ada is not None:
            self.ada.step()
        return mean_values_over_ranks({
            "loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()), "r1": float(r1.detach()),
            "pl": float(pl), "ada_p": float(self.augment.p), "resolution": float(res), "alpha": float(alpha),
        })

    @torch.no_grad()
    def sample_grid(self, path: Path, iteration: int, columns: int = 8) -> None:
        """Fixed latents (columns) x conditions (rows) from the EMA generator, as a PNG."""
        res, alpha = self.schedule.state(iteration * self.cfg.batch_size)
        conds = grid_conditions(self.schema).to(self.device)
        z = torch.randn(columns, self.G.z_dim, generator=generator(self.cfg.seed, "grid")).to(self.device)
        zz = z.repeat(len(conds), 1)
        cc = conds.repeat_interleave(columns, dim=0)
        images = self.G_ema(zz, cc, resolution=res, alpha=alpha, noise_mode="const")
        with atomic_path(path) as tmp:
            save_image(
                images.float().clamp(-1, 1), tmp, nrow=columns, normalize=True, value_range=(-1, 1), format="png"
            )

    def write_snapshot(self, run_dir: Path, iteration: int) -> None:
        """The sample grid of ``iteration`` and ``generator.safetensors`` (the EMA generator and its metadata)."""
        kimg = iteration * self.cfg.batch_size / 1000
        self.sample_grid(run_dir / "samples" / f"grid-{kimg:08.2f}kimg.png", iteration)
        export_generator(
            run_dir / "generator.safetensors", self.G_ema, self.network.to_dict(),
            training_metadata(self.state.config, iteration), list(self.schema.columns),
        )


def iterations(cfg: TrainingConfig) -> tuple[int, int]:
    """``(total, snapshot_every)``: the iterations of a run of ``cfg.kimg`` and between two snapshots."""
    return math.ceil(cfg.kimg * 1000 / cfg.batch_size), max(1, round(cfg.snapshot_kimg * 1000 / cfg.batch_size))


def train(trainer: GanTrainer, dataset: Dataset, run_dir: Path, *, workers: int, progress: bool) -> None:
    """Train from ``trainer.state.iteration`` to the end of the run, with a snapshot every ``snapshot_kimg``.

    Each snapshot is an atomic checkpoint of :meth:`GanTrainer.objects`, a
    sample grid and ``generator.safetensors`` (:meth:`GanTrainer.write_snapshot`),
    through the shared handlers of :func:`plumbing.training.attach_training_handlers`.
    The minibatch order comes from :class:`plumbing.sampling.ResumableBatchSampler`
    started at the current iteration, so a resumed run continues exactly.
    A non-finite loss is a :class:`UserError` naming the last good checkpoint.
    Under several processes each rank loads its part of every global batch and
    starts from rank 0's networks; rank 0 writes the snapshots.
    """
    cfg, start = trainer.cfg, trainer.state.iteration
    total, snapshot = iterations(cfg)
    local_batch_size(cfg.batch_size)  # refuses a global batch the processes cannot share
    for module in (trainer.G, trainer.D, trainer.G_ema):
        broadcast_module(module)
    loader = DataLoader(
        dataset,
        batch_sampler=ResumableBatchSampler(
            len(dataset), cfg.batch_size, cfg.seed, start=start, rank=rank(), world_size=world_size()
        ),
        num_workers=workers,
        pin_memory=trainer.device.type == "cuda",
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

    attach_training_handlers(
        engine,
        run_dir=run_dir,
        to_save=trainer.objects(),
        checkpoint_every=snapshot,
        progress=progress,
        on_checkpoint=lambda eng: trainer.write_snapshot(run_dir, eng.state.iteration),
    )
    try:
        engine.run(loader, max_iters=total, epoch_length=snapshot)
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
