"""The GAN trainer: networks, optimisers, one training iteration and the training loop.

The configuration it trains with is :class:`synth.config.TrainingConfig`;
:func:`training_dataset` and :func:`network_config` build what a run needs
and :func:`train` runs its steps with the shared skeleton (:class:`plumbing.engine.StepRunner`).

One iteration (:meth:`GanTrainer.step`) is one generator step and one
discriminator step on a minibatch of ``B`` real images with their condition
vectors (the data set's finding vectors through :meth:`FindingSchema.condition`;
drawn class-balanced over a label task with ``balance_task``, see :func:`training_dataset`);
the two objectives are :func:`synth.losses.generator_objective` and
:func:`synth.losses.discriminator_objective`:

* G: ``L_G = softplus(-D(A(G(z, c)), c))`` (non-saturating logistic), plus
  the path-length penalty every 4 steps when ``pl_weight`` > 0;
* D: ``L_D = softplus(D(A(G(z, c)), c)) + softplus(-D(A(x), c))`` on the
  fakes of the G step (detached; saves a generator forward), plus lazy R1
  every ``k = r1_interval`` steps: ``k * gamma/2 * ||grad_x D(A(x), c)||^2``,
  folded into that step's loss (so Adam keeps its plain lr and betas (0, 0.99));
* with ``ac_weight = w > 0``, AC-GAN: D has an auxiliary classifier ``D_aux``
  of the ``c_dim`` condition values (:meth:`Discriminator.with_classes`, read
  from the same passes as the logits), ``L_D += w * L_ac(D_aux(A(x)), c)`` on
  the reals and ``L_G += w * L_ac(D_aux(A(G(z, c))), c)`` on the fakes
  (:func:`synth.losses.ac_loss`). The classifier learns from real images
  only, as in the common AC-GAN variant (StudioGAN, for one); Odena et al.'s
  original also trains it on the fakes, which teaches it the early
  generator's failures. ``w = 0`` builds no classifier and computes nothing
  more;
* ``A`` is the ADA pipeline; its probability moves toward
  ``E[sign D(A(x))] = ada_target`` every 4 steps;
* the EMA generator follows ``G`` with a half-life of ``ema_kimg``
  (:func:`plumbing.ema.ema_update`, decay :func:`synth.losses.ema_beta`).

Progressive growing (``start_resolution`` below ``resolution``) follows
:class:`synth.schedule.ProgressiveSchedule`; the real images are
area-downsampled to the active resolution and, during a fade, blended as the
generator's output is (:func:`synth.layers.fade_images`). Every random draw of
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
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image

from datasets.batches import sampled_batches
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
from plumbing.ema import ema_update
from plumbing.engine import StepRunner
from plumbing.errors import UserError
from plumbing.files import atomic_path
from plumbing.precision import bf16_autocast, memory_layout
from plumbing.sampling import ResumableBatchSampler
from plumbing.seeding import derive_seed, generator
from plumbing.training import Progress, TrainingDiverged
from synth.discriminator import Discriminator
from synth.generator import Generator
from synth.layers import fade_images
from synth.network_config import NetworkConfig
from synth.networks import build_networks

from .augment import AdaController, AugmentPipe
from .balance import BalancedBatchSampler
from .config import TrainingConfig, balance_label_task
from .export import export_generator, training_metadata
from .fidelity_probe import FidelityProbe, caption_grid
from .losses import (
    ac_loss,
    discriminator_objective,
    ema_beta,
    generator_objective,
    path_length_penalty,
    r1_penalty,
)

GRID_FINDINGS = (
    "Cardiomegaly", "Pneumothorax", "Pneumonia", "Pleural Effusion", "Effusion", "Edema", "Support Devices",
)
"""Findings shown one per row of the sample grids (those the schema has), after the all-zero row."""

PL_INTERVAL = 4


@dataclass
class RunState(Progress):
    """The checkpointed progress (record and position) and the path-length regulariser's running mean, kept
    for the resolution it was measured at."""

    pl_mean: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    pl_resolution: int = 0


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
    """The training split of ``cfg.data`` at the target resolution (``data_length`` images, when given).

    With ``balance_task`` the data set holds the members of that label task's
    classes only (``build_dataset(..., task=...)``: ``label`` is the class) and
    :func:`batch_sampler` draws every class equally often. The images outside
    the task are dropped: a generator trained for a task is asked by
    ``synth.generate`` for that task's classes alone, in equal numbers and with
    its members' condition vectors, which is then exactly what it trains on.
    A class without a training image, or an image without a finding vector
    (the generator's condition: a ``folder`` labelled by class or not at all),
    is a :class:`UserError`.
    """
    spec = training_spec(cfg.data)
    options = spec.count_options(cfg.data_length)
    task = balance_label_task(cfg.balance_task)
    dataset = build_dataset(spec.name, root=data_root, split="train", task=task, resolution=cfg.resolution, **options)
    records = getattr(dataset, "records", None)  # readers of files; generated data sets always carry findings
    if records is not None:
        lacking = len(dataset) if records.findings is None else int(np.isnan(records.findings).all(axis=1).sum())
        if lacking:
            raise UserError(f"--data {spec.name}: {lacking} of its {len(dataset)} training images have no finding "
                            "vector, which conditions the generator (a folder needs a labels.csv row with finding "
                            "columns for every image)")
    if task is not None:
        counts = np.bincount(np.asarray(dataset.labels), minlength=len(task.classes))  # type: ignore[attr-defined]
        empty = [name for name, n in zip(task.classes, counts, strict=True) if n == 0]
        if empty:
            raise UserError(f"--balance-task {task.name}: no training image of {', '.join(empty)} in "
                            f"{len(dataset)} {spec.name} images; use more images (--data-length)")
    return dataset


def batch_sampler(cfg: TrainingConfig, dataset: Dataset, start: int) -> Sampler[list[int]]:
    """This rank's index batches from batch ``start`` on: uniform epochs, or class-balanced with ``balance_task``.

    :class:`plumbing.sampling.ResumableBatchSampler`, or
    :class:`synth.balance.BalancedBatchSampler` over the data set's labels;
    either is a pure function of ``(seed, batch number)``.
    """
    task = balance_label_task(cfg.balance_task)
    if task is None:
        return ResumableBatchSampler(
            len(dataset), cfg.batch_size, cfg.seed, start=start, rank=rank(), world_size=world_size()
        )
    labels = np.asarray(dataset.labels)  # type: ignore[attr-defined]
    return BalancedBatchSampler(
        labels, len(task.classes), cfg.batch_size, cfg.seed, start=start, rank=rank(), world_size=world_size()
    )


def network_config(
    preset: str, resolution: int, c_dim: int, channels: int, channel_base: int | None, channel_max: int | None
) -> NetworkConfig:
    """The networks of a new run: a preset (:data:`synth.network_config.PRESETS`) with the given overrides."""
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
        G, D = build_networks(network, classifier=cfg.ac_weight > 0)
        layout = memory_layout(device)
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
        self.state = RunState()
        self.probe: FidelityProbe | None = None
        """Label fidelity at every snapshot (:mod:`synth.fidelity_probe`), set by the command when asked."""

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
        return bf16_autocast(self.device, self.amp)

    def conditions(self, findings: torch.Tensor) -> torch.Tensor:
        """Condition vectors of a batch of finding vectors (:meth:`FindingSchema.condition`)."""
        return torch.from_numpy(self.schema.condition(findings.cpu().numpy())).to(self.device)

    def _logits_and_class_loss(
        self, images: torch.Tensor, c: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """D's logits of ``images`` and, with ``ac_weight`` > 0, ``L_ac`` of its class logits against ``c`` (else 0)."""
        if self.cfg.ac_weight > 0:
            logits, classes = self.D.with_classes(images, c, alpha=alpha)
            return logits, ac_loss(classes, c)
        return self.D(images, c, alpha=alpha), torch.zeros((), device=self.device)

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
            fake_logits, ac_fake = self._logits_and_class_loss(self.augment(fake), c, alpha)
            loss_g = generator_objective(fake_logits, ac_fake, cfg.ac_weight)
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
            real_logits, ac_real = self._logits_and_class_loss(self.augment(real), c, alpha)
        if self.ada is not None:
            self.ada.observe(real_logits)
        r1 = torch.zeros((), device=self.device)
        lazy_r1 = None
        if cfg.r1_interval > 0 and iteration % cfg.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(self.augment(real_r1), c, alpha=alpha), real_r1, cfg.gamma)
            lazy_r1 = r1 * cfg.r1_interval
        loss_d = discriminator_objective(real_logits, fake_logits, ac_real, cfg.ac_weight, lazy_r1)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        average_gradients(self.D.parameters())
        self.opt_D.step()

        decay = ema_beta(B, cfg.ema_kimg, cur_nimg=(iteration + 1) * B, rampup=0.05)
        ema_update(self.G_ema, self.G, decay, buffers="copy")
        if self.ada is not None:
            self.ada.step()
        return mean_values_over_ranks({
            "loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()), "r1": float(r1.detach()),
            "pl": float(pl), "ac_real": float(ac_real.detach()), "ac_fake": float(ac_fake.detach()),
            "ada_p": float(self.augment.p), "resolution": float(res), "alpha": float(alpha),
        })

    @torch.no_grad()
    def sample_grid(
        self, path: Path, iteration: int, columns: int = 8, caption: dict[str, float] | None = None
    ) -> None:
        """Fixed latents (columns) x conditions (rows) from the EMA generator, as a PNG.

        ``caption``: the probe's label fidelity, written below the grid.
        """
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
            if caption is not None and self.probe is not None:
                caption_grid(tmp, caption, self.probe.task)

    def probe_fidelity(self, run_dir: Path, iteration: int) -> dict[str, float]:
        """The probe's label fidelity of the EMA generator, into TensorBoard (``fidelity/<class>``) and
        ``samples/label_fidelity.jsonl``."""
        assert self.probe is not None
        res, alpha = self.schedule.state(iteration * self.cfg.batch_size)
        agreement = self.probe.measure(self.G_ema, res, alpha)
        with SummaryWriter(log_dir=str(run_dir / "tb")) as writer:
            for name, value in agreement.items():
                writer.add_scalar(f"fidelity/{name}", value, iteration)
            writer.add_scalar("fidelity/min", min(agreement.values()), iteration)
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        with open(run_dir / "samples" / "label_fidelity.jsonl", "a") as f:
            f.write(json.dumps({"iteration": iteration, "kimg": iteration * self.cfg.batch_size / 1000,
                                "task": self.probe.task.name, "agreement": agreement}) + "\n")
        return agreement

    def write_snapshot(self, run_dir: Path, iteration: int) -> None:
        """The sample grid of ``iteration`` and ``generator.safetensors`` (the EMA generator and its metadata)."""
        kimg = iteration * self.cfg.batch_size / 1000
        agreement = self.probe_fidelity(run_dir, iteration) if self.probe is not None else None
        self.sample_grid(run_dir / "samples" / f"grid-{kimg:08.2f}kimg.png", iteration, caption=agreement)
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
    through the shared skeleton (:meth:`plumbing.engine.StepRunner.train`).
    The minibatch order comes from :func:`batch_sampler` started at the
    current iteration, so a resumed run continues exactly.
    A non-finite loss is a :class:`UserError` naming the last good checkpoint.
    Under several processes each rank loads its part of every global batch and
    starts from rank 0's networks; rank 0 writes the snapshots.
    """
    cfg = trainer.cfg
    total, snapshot = iterations(cfg)
    local_batch_size(cfg.batch_size)  # refuses a global batch the processes cannot share
    for module in (trainer.G, trainer.D, trainer.G_ema):
        broadcast_module(module)
    loader = sampled_batches(dataset, batch_sampler(cfg, dataset, trainer.state.iteration), workers, trainer.device)
    # GanTrainer.step takes the iteration explicitly (it seeds the step's draws); it is the number of steps before
    runner = StepRunner(lambda batch: trainer.step(trainer.state.iteration, batch), trainer.state, total=total,
                        epoch_length=snapshot)
    try:
        runner.train(loader, run_dir=run_dir, to_save=trainer.objects(), checkpoint_every=snapshot,
                     progress=progress, on_checkpoint=lambda iteration: trainer.write_snapshot(run_dir, iteration))
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
