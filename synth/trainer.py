"""The GAN trainer: its typed configuration, networks, optimisers and one training iteration.

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

On a GPU the networks are channels_last and, with bf16 autocast on a GPU
with native bf16 (:mod:`plumbing.precision`), run under autocast (which
parts stay fp32: :mod:`synth.networks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.utils import save_image

from datasets.findings import FindingSchema
from datasets.registry import build_dataset, get_spec
from datasets.spec import DataSetSpec
from plumbing.config import dataclass_from_dict
from plumbing.errors import UserError
from plumbing.files import atomic_path
from plumbing.seeding import derive_seed, generator

from .augment import AdaController, AugmentPipe
from .losses import d_logistic_loss, ema_beta, ema_update, g_nonsaturating_loss, path_length_penalty, r1_penalty
from .networks import Discriminator, Generator, NetworkConfig, build_networks, fade_images
from .schedule import ProgressiveSchedule

GRID_FINDINGS = (
    "Cardiomegaly", "Pneumothorax", "Pneumonia", "Pleural Effusion", "Effusion", "Edema", "Support Devices",
)
"""Findings shown one per row of the sample grids (those the schema has), after the all-zero row."""

PL_INTERVAL = 4


@dataclass(frozen=True)
class TrainingConfig:
    """What defines a GAN run; saved in every checkpoint and fixed across resumes except ``kimg``.

    Build one with :meth:`resolve`, which fills the automatic values;
    checkpoints hold it as a plain dict (:meth:`to_dict`, :meth:`from_dict`).
    """

    data: str = "phantom"
    data_length: int | None = None
    resolution: int = 64
    start_resolution: int = 64
    fade_kimg: float = 2.0
    stable_kimg: float = 2.0
    batch_size: int = 16
    lr: float = 0.0025
    gamma: float = 0.0002 * 64**2 / 16
    r1_interval: int = 16
    pl_weight: float = 0.0
    mixing: float = 0.9
    ema_kimg: float = 16 * 10 / 32
    no_ada: bool = False
    ada_target: float = 0.6
    ada_kimg: float = 100.0
    seed: int = 0
    cache: bool = False
    snapshot_kimg: float = 1.0
    kimg: float = 10.0

    @classmethod
    def resolve(
        cls,
        *,
        start_resolution: int | None = None,
        gamma: float | None = None,
        ema_kimg: float | None = None,
        **options: Any,
    ) -> TrainingConfig:
        """A configuration with automatic values for the options given as ``None``.

        ``start_resolution`` defaults to ``resolution`` (no growing); ``gamma``
        to ``0.0002 * resolution^2 / batch_size`` (StyleGAN2-ADA's "auto");
        ``ema_kimg`` to ``batch_size * 10 / 32``.
        """
        base = cls(**options)
        r, b = base.resolution, base.batch_size
        return dataclasses.replace(
            base,
            start_resolution=start_resolution or r,
            gamma=gamma if gamma is not None else 0.0002 * r**2 / b,
            ema_kimg=ema_kimg if ema_kimg is not None else b * 10 / 32,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        return dataclass_from_dict(cls, data, "training configuration")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def schedule(self) -> ProgressiveSchedule:
        """The progressive-growing schedule; a start resolution that does not divide the target is a UserError."""
        try:
            return ProgressiveSchedule(self.start_resolution, self.resolution, self.fade_kimg, self.stable_kimg)
        except ValueError as exc:
            raise UserError(str(exc)) from None


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


def _adam(params: Any, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99), eps=1e-8)


class GanTrainer:
    """Networks, optimisers and the per-iteration update of one GAN run."""

    def __init__(
        self, cfg: TrainingConfig, network: NetworkConfig, schema: FindingSchema, device: torch.device, amp: bool
    ) -> None:
        self.cfg, self.schema, self.device, self.amp = cfg, schema, device, amp
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
        gen = generator(cfg.seed, "step", iteration, device=self.device)
        torch.manual_seed(derive_seed(cfg.seed, "global", iteration))  # augmentation and noise draws

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
            self.state.pl_mean = out.pl_mean.detach().cpu()
            (out.penalty * cfg.pl_weight * PL_INTERVAL).backward()
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
        if cfg.r1_interval > 0 and iteration % cfg.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(self.augment(real_r1), c, alpha=alpha), real_r1, cfg.gamma)
            loss_d = loss_d + r1 * cfg.r1_interval
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()

        ema_update(self.G_ema, self.G, ema_beta(B, cfg.ema_kimg, cur_nimg=(iteration + 1) * B, rampup=0.05))
        if self.ada is not None:
            self.ada.step()
        return {
            "loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()), "r1": float(r1.detach()),
            "pl": float(pl), "ada_p": float(self.augment.p), "resolution": float(res), "alpha": float(alpha),
        }

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
