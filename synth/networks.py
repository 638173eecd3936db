"""Class-conditional StyleGAN2 generator and residual discriminator, with progressive growing.

Generator = :class:`MappingNetwork` (``z, c -> w``) + :class:`SynthesisNetwork`
(``ws -> image``). Discriminator = residual blocks, minibatch standard deviation
and a conditional projection head, optionally with an auxiliary classifier of
the condition values (AC-GAN). Widths follow
``channels(r) = min(channel_base // r, channel_max)`` at resolution ``r``.

Progressive growing (both networks take a ``resolution``/image size below the
maximum and a fade-in weight ``alpha`` in ``[0, 1]``):

* Generator at resolution ``r > 4``: with ``img_{r/2}`` the skip image of the
  blocks up to ``r/2`` (that is, the generator's output at ``r/2``) and
  ``rgb_r`` the newest block's toRGB output, the full image is
  ``upsample2d(img_{r/2}) + rgb_r`` and the faded output is
  ``lerp(upsample2d(img_{r/2}), upsample2d(img_{r/2}) + rgb_r, alpha)
  = upsample2d(img_{r/2}) + alpha * rgb_r``.
  ``alpha = 0`` gives exactly ``upsample2d(G(..., resolution=r/2))``.
* Discriminator with an ``r x r`` input, ``r > 4``: the features entering the
  ``r/2`` stage are ``lerp(fromRGB_{r/2}(downsample2d(img)), block_r(fromRGB_r(img)), alpha)``.
  ``alpha = 0`` gives exactly ``D(downsample2d(img))``.
* At resolution 4 there is nothing to fade and ``alpha`` is ignored.

The real images shown to the discriminator during a fade can be blended the
same way with :func:`fade_images`.

Mixed precision: the networks run under ``torch.autocast`` (bf16 or fp16).
The mapping networks, styles, demodulation coefficients, the generator's skip
image and the discriminator's 4x4 epilogue always run in fp32, and blocks below
the ``num_fp16_res`` highest resolutions run with autocast off (as the reference
runs only its top resolutions in fp16); activations are clamped to
``conv_clamp``. Both networks accept channels_last tensors (``model.to(memory_format=torch.channels_last)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plumbing.config import dataclass_from_dict
from plumbing.errors import UserError

from .layers import (
    NOISE_MODES,
    EqualConv2d,
    EqualLinear,
    ModulatedConv2d,
    NoiseMode,
    autocast_off,
    downsample2d,
    normalize_2nd_moment,
    upsample2d,
)

RESOLUTIONS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
"""Maximum resolutions a network can be built for."""


@dataclass
class NetworkConfig:
    """Architecture of the generator and the discriminator (plain types only, see :meth:`to_dict`).

    Attributes:
        resolution: maximum image size (one of :data:`RESOLUTIONS`).
        img_channels: image channels (1 for radiographs).
        c_dim: length of the condition vector (0 = unconditional).
        z_dim: latent size.
        w_dim: intermediate latent size.
        embed_dim: size of the condition embedding in the mapping networks
            (``None`` = ``w_dim`` in the generator, ``cmap_dim`` in the discriminator).
        mapping_layers: fully connected layers of the generator's mapping network.
        mapping_lr_mul: learning-rate multiplier of the mapping networks.
        w_avg_beta: decay of the tracked average ``w`` (``w_avg = lerp(mean(w), w_avg, beta)``).
        channel_base, channel_max: ``channels(r) = min(channel_base // r, channel_max)``.
        conv_clamp: clamp of every convolution's activations (``None`` = off).
        num_fp16_res: how many of the highest resolutions may run in reduced
            precision under autocast; lower ones run in fp32.
        mbstd_group_size: minibatch-stddev group size (the largest divisor of the
            batch not above it is used).
        mbstd_num_channels: feature groups of the minibatch stddev.
        d_mapping_layers: layers of the discriminator's condition mapping.
    """

    resolution: int = 256
    img_channels: int = 1
    c_dim: int = 14
    z_dim: int = 512
    w_dim: int = 512
    embed_dim: int | None = None
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 16384
    channel_max: int = 512
    conv_clamp: float | None = 256.0
    num_fp16_res: int = 4
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    d_mapping_layers: int = 8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` on a value the networks cannot be built with."""
        if self.resolution not in RESOLUTIONS:
            raise UserError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        if self.channel_base < self.resolution or self.channel_max < 1:
            raise UserError(
                f"channel_base ({self.channel_base}) must be at least the resolution ({self.resolution}) "
                f"and channel_max ({self.channel_max}) positive"
            )
        for name in ("img_channels", "z_dim", "w_dim", "mapping_layers", "d_mapping_layers",
                     "mbstd_group_size", "mbstd_num_channels"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.c_dim < 0 or self.num_fp16_res < 0:
            raise UserError(f"c_dim and num_fp16_res must be >= 0, got {self.c_dim}, {self.num_fp16_res}")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise UserError(f"embed_dim must be positive or None, got {self.embed_dim}")
        if not 0.0 <= self.w_avg_beta <= 1.0 or self.mapping_lr_mul <= 0:
            raise UserError("w_avg_beta must lie in [0, 1] and mapping_lr_mul be positive")

    def channels(self, res: int) -> int:
        """Feature channels at resolution ``res``."""
        return min(self.channel_base // res, self.channel_max)

    def fp32_below(self) -> int:
        """Blocks at resolutions below this run in fp32 even under autocast."""
        return max(2 ** (int(math.log2(self.resolution)) + 1 - self.num_fp16_res), 8)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, floats, None) for checkpoints and Zarr attributes."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`UserError`."""
        return dataclass_from_dict(cls, data, "network config")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NetworkConfig:
        """A named preset (see :data:`PRESETS`) with ``overrides`` applied."""
        if name not in PRESETS:
            raise UserError(f"unknown network preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # StyleGAN2-ADA paper256 widths (channel_base 16384, channel_max 512, 8 mapping layers)
    "paper": {},
    # a few-hundred-thousand-parameter model that trains on a CPU at 32-64 px
    "tiny": {"channel_base": 1024, "channel_max": 64, "z_dim": 64, "w_dim": 64,
             "mapping_layers": 2, "d_mapping_layers": 2},
}


def _block_precision(x: Tensor, fp32: bool) -> tuple[Tensor, contextlib.AbstractContextManager[Any]]:
    """``(x, ctx)``: for fp32 blocks ``x`` is cast to float32 and ``ctx`` turns autocast off."""
    if fp32:
        return x.float(), autocast_off(x.device.type)
    return x, contextlib.nullcontext()


def _check_resolution(res: int, max_res: int) -> None:
    if res < 4 or res > max_res or res & (res - 1):
        raise ValueError(f"resolution must be a power of two in [4, {max_res}], got {res}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")


def fade_images(images: Tensor, alpha: float) -> Tensor:
    """``lerp(upsample2d(downsample2d(x)), x, alpha)``: real images matched to a fading generator."""
    _check_alpha(alpha)
    if alpha >= 1.0:
        return images
    return torch.lerp(upsample2d(downsample2d(images)), images, alpha)


class MappingNetwork(nn.Module):
    """``w = MLP(concat(norm(z), norm(embed(c))))`` with leaky-ReLU layers at lr multiplier ``lr_mul``.

    ``norm`` divides by the root mean square (second moment) over features.
    The embedding's bias starts at ``N(0, 1)`` rather than 0 so that the
    all-zero condition (an image without findings) gets a non-zero embedding.
    Either part may be absent (``z_dim = 0`` maps conditions only, as the
    discriminator's projection does; ``c_dim = 0`` is unconditional). With
    ``w_avg_beta`` set, the buffer ``w_avg`` tracks
    ``w_avg <- lerp(mean_batch(w), w_avg, beta)`` whenever ``update_w_avg`` is true.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        *,
        embed_dim: int | None = None,
        num_layers: int = 8,
        lr_mul: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        if z_dim + c_dim == 0:
            raise ValueError("a mapping network needs z_dim > 0 or c_dim > 0")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        embed_dim = w_dim if embed_dim is None else embed_dim
        self.embed = EqualLinear(c_dim, embed_dim) if c_dim > 0 else None
        if self.embed is not None:
            # A zero bias would map the all-zero condition (no findings) to a zero embedding and,
            # in the discriminator, a zero projection: D(x, 0) = 0 for every x at init.
            nn.init.normal_(self.embed.bias)
        dims = [z_dim + (embed_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul, activation="lrelu") for i in range(num_layers)
        )
        self.w_avg_beta = w_avg_beta
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor | None, c: Tensor | None, *, update_w_avg: bool = False) -> Tensor:
        """``[B, z_dim]``, ``[B, c_dim]`` -> ``w`` ``[B, w_dim]`` (fp32, autocast off)."""
        parts = []
        device = (z if z is not None else c).device  # type: ignore[union-attr]
        with autocast_off(device.type):
            if self.z_dim > 0:
                if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                    raise ValueError(f"z must be [B, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
                parts.append(normalize_2nd_moment(z.float()))
            if self.embed is not None:
                if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                    raise ValueError(f"c must be [B, {self.c_dim}], got {None if c is None else tuple(c.shape)}")
                parts.append(normalize_2nd_moment(self.embed(c.float())))
            x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            for layer in self.layers:
                x = layer(x)
            if update_w_avg and self.w_avg_beta is not None:
                with torch.no_grad():
                    self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        return x


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network (skip architecture).

    The 4x4 block starts from a learned constant and has one 3x3 modulated
    convolution; every other block has an upsampling one and a plain one. Each
    block ends with a toRGB layer whose output is added to the upsampled skip
    image. Uses ``num_conv`` ws for its convolutions and the next one for toRGB.
    """

    def __init__(self, in_channels: int, out_channels: int, config: NetworkConfig, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.fp32 = resolution < config.fp32_below()
        clamp = config.conv_clamp
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = ModulatedConv2d(
                in_channels, out_channels, config.w_dim, up=2, noise_resolution=resolution, clamp=clamp
            )
        self.conv1 = ModulatedConv2d(out_channels, out_channels, config.w_dim, noise_resolution=resolution, clamp=clamp)
        self.torgb = ModulatedConv2d(
            out_channels, config.img_channels, config.w_dim, kernel_size=1, demodulate=False,
            activation="linear", clamp=clamp,
        )
        self.num_conv = 1 if resolution == 4 else 2

    def forward(
        self,
        x: Tensor | None,
        img: Tensor | None,
        ws: list[Tensor],
        *,
        noise_mode: NoiseMode,
        alpha: float = 1.0,
        fused: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``ws``: ``num_conv + 1`` tensors ``[B, w_dim]``. Returns ``(x, img)``; ``img`` is fp32.

        ``img_out = upsample2d(img) + alpha * toRGB(x)`` (just ``toRGB(x)`` at 4x4).
        """
        kw = {"fused": fused, "generator": generator}
        if self.const is not None:
            x = self.const.unsqueeze(0).expand(ws[0].shape[0], -1, -1, -1)
            if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
        assert x is not None
        x, ctx = _block_precision(x, self.fp32)
        with ctx:
            if self.conv0 is not None:
                x = self.conv0(x, ws[0], noise_mode=noise_mode, **kw)
            x = self.conv1(x, ws[self.num_conv - 1], noise_mode=noise_mode, **kw)
            rgb = self.torgb(x, ws[self.num_conv], noise_mode="none", **kw).float()
        if img is None:
            return x, rgb
        img = upsample2d(img)
        return x, img + rgb if alpha >= 1.0 else img + alpha * rgb


class SynthesisNetwork(nn.Module):
    """``ws [B, num_ws, w_dim] -> image [B, img_channels, r, r]`` (values about [-1, 1], no squashing)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.resolution = config.resolution
        self.w_dim = config.w_dim
        self.img_channels = config.img_channels
        self.resolutions = tuple(2**i for i in range(2, int(math.log2(config.resolution)) + 1))
        self.blocks = nn.ModuleDict()
        for res in self.resolutions:
            in_ch = config.channels(res // 2) if res > 4 else 0
            self.blocks[f"b{res}"] = SynthesisBlock(in_ch, config.channels(res), config, res)
        self.num_ws = self.num_ws_for(self.resolution)

    @staticmethod
    def num_ws_for(resolution: int) -> int:
        """ws used up to ``resolution``: ``2 log2(r) - 2`` (two per block, one more for the last toRGB)."""
        return 2 * int(math.log2(resolution)) - 2

    def forward(
        self,
        ws: Tensor,
        *,
        noise_mode: NoiseMode = "random",
        resolution: int | None = None,
        alpha: float = 1.0,
        fused: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        res = self.resolution if resolution is None else resolution
        _check_resolution(res, self.resolution)
        _check_alpha(alpha)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {noise_mode!r} (use one of {NOISE_MODES})")
        need = self.num_ws_for(res)
        if ws.ndim != 3 or ws.shape[1] < need or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [B, >={need}, {self.w_dim}] at resolution {res}, got {tuple(ws.shape)}")
        w_list = ws.unbind(dim=1)
        x: Tensor | None = None
        img: Tensor | None = None
        index = 0
        for block_res in self.resolutions:
            if block_res > res:
                break
            block: SynthesisBlock = self.blocks[f"b{block_res}"]  # type: ignore[assignment]
            block_ws = list(w_list[index : index + block.num_conv + 1])
            x, img = block(
                x, img, block_ws, noise_mode=noise_mode, alpha=alpha if block_res == res else 1.0,
                fused=fused, generator=generator,
            )
            index += block.num_conv
        assert img is not None
        return img


class Generator(nn.Module):
    """Conditional StyleGAN2 generator: ``G(z, c) = synthesis(mapping(z, c))``.

    Truncation: ``w' = lerp(w_avg, w, psi)`` on the first ``truncation_cutoff``
    ws (all when ``None``), with ``w_avg`` the tracked global average or a
    given ``[B, w_dim]`` tensor such as :meth:`mean_w` of the conditions
    (per-condition truncation). Style mixing (probability ``mixing_prob``, per
    sample): a second ``z`` with the same condition is mapped to ``w2`` and
    ``ws[b, k:] = w2[b]`` from a crossover ``k`` drawn uniformly in
    ``[1, num_ws(resolution))``.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.z_dim, self.c_dim, self.w_dim = config.z_dim, config.c_dim, config.w_dim
        self.img_resolution, self.img_channels = config.resolution, config.img_channels
        self.mapping = MappingNetwork(
            config.z_dim, config.c_dim, config.w_dim, embed_dim=config.embed_dim,
            num_layers=config.mapping_layers, lr_mul=config.mapping_lr_mul, w_avg_beta=config.w_avg_beta,
        )
        self.synthesis = SynthesisNetwork(config)
        self.num_ws = self.synthesis.num_ws

    @property
    def w_avg(self) -> Tensor:
        return self.mapping.w_avg

    def compute_ws(
        self,
        z: Tensor,
        c: Tensor | None,
        *,
        psi: float = 1.0,
        truncation_cutoff: int | None = None,
        w_avg: Tensor | None = None,
        mixing_prob: float = 0.0,
        resolution: int | None = None,
        update_w_avg: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``ws`` ``[B, num_ws(resolution), w_dim]`` for :attr:`synthesis`.

        ``update_w_avg=None`` updates the tracked average in training mode only
        (never from the mixing latents). ``generator`` (on ``z``'s device) drives
        the mixing draws.
        """
        res = self.img_resolution if resolution is None else resolution
        _check_resolution(res, self.img_resolution)
        n = self.synthesis.num_ws_for(res)
        update = self.training if update_w_avg is None else update_w_avg
        w = self.mapping(z, c, update_w_avg=update)
        batch = w.shape[0]
        ws = w.unsqueeze(1).expand(batch, n, self.w_dim)
        if mixing_prob > 0.0:
            z2 = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            w2 = self.mapping(z2, c, update_w_avg=False)
            cut = torch.randint(1, n, (batch,), generator=generator, device=z.device)
            mix = torch.rand((batch,), generator=generator, device=z.device) < mixing_prob
            cut = torch.where(mix, cut, torch.full_like(cut, n))
            later = torch.arange(n, device=z.device).unsqueeze(0) >= cut.unsqueeze(1)  # [B, n]
            ws = torch.where(later.unsqueeze(2), w2.unsqueeze(1), ws)
        if psi != 1.0:
            avg = self.mapping.w_avg if w_avg is None else w_avg
            avg = avg.to(ws.dtype).reshape(-1, 1, self.w_dim)
            if avg.shape[0] not in (1, batch):
                raise ValueError(f"w_avg must be [w_dim] or [{batch}, w_dim], got {tuple(avg.shape)}")
            truncated = torch.lerp(avg.expand_as(ws), ws, psi)
            if truncation_cutoff is None:
                ws = truncated
            else:
                head = (torch.arange(n, device=ws.device) < truncation_cutoff).reshape(1, n, 1)
                ws = torch.where(head, truncated, ws)
        return ws

    def forward(
        self,
        z: Tensor,
        c: Tensor | None,
        *,
        psi: float = 1.0,
        truncation_cutoff: int | None = None,
        w_avg: Tensor | None = None,
        noise_mode: NoiseMode = "random",
        resolution: int | None = None,
        alpha: float = 1.0,
        mixing_prob: float = 0.0,
        update_w_avg: bool | None = None,
        fused_modconv: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Images ``[B, img_channels, r, r]`` (fp32) at ``resolution`` (default: the maximum)."""
        ws = self.compute_ws(
            z, c, psi=psi, truncation_cutoff=truncation_cutoff, w_avg=w_avg, mixing_prob=mixing_prob,
            resolution=resolution, update_w_avg=update_w_avg, generator=generator,
        )
        return self.synthesis(
            ws, noise_mode=noise_mode, resolution=resolution, alpha=alpha, fused=fused_modconv, generator=generator
        )

    @torch.no_grad()
    def mean_w(
        self,
        c: Tensor | None,
        *,
        n: int = 1000,
        generator: torch.Generator | None = None,
        chunk: int = 8192,
    ) -> Tensor:
        """Average ``w`` of each condition row, ``(1/n) sum_j mapping(z_j, c)``, shape ``[B, w_dim]``.

        With ``c=None`` (unconditional) it returns the estimate of the global
        average, ``[1, w_dim]``. ``chunk`` bounds the rows mapped at once.
        """
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        device = self.mapping.layers[0].weight.device
        rows = 1 if c is None else c.shape[0]
        per_chunk = max(1, chunk // rows)
        total = torch.zeros(rows, self.w_dim, device=device)
        done = 0
        while done < n:
            m = min(per_chunk, n - done)
            z = torch.randn((rows * m, self.z_dim), generator=generator, device=device)
            cc = None if c is None else c.to(device).unsqueeze(1).expand(rows, m, c.shape[1]).reshape(rows * m, -1)
            total += self.mapping(z, cc, update_w_avg=False).reshape(rows, m, self.w_dim).sum(dim=1)
            done += m
        return total / n


class DiscriminatorBlock(nn.Module):
    """Residual block ``r -> r/2``: ``(skip(x) + conv1(conv0(x))) / sqrt(2)``.

    ``conv0`` 3x3, ``conv1`` 3x3 with 2x downsampling, ``skip`` 1x1 with 2x
    downsampling and no bias. ``fromrgb`` (1x1, leaky ReLU) maps an image at this
    resolution to the block's input features.
    """

    def __init__(self, config: NetworkConfig, resolution: int) -> None:
        super().__init__()
        tmp, out = config.channels(resolution), config.channels(resolution // 2)
        clamp = config.conv_clamp
        self.resolution = resolution
        self.fp32 = resolution < config.fp32_below()
        self.fromrgb = EqualConv2d(config.img_channels, tmp, 1, activation="lrelu", clamp=clamp)
        self.conv0 = EqualConv2d(tmp, tmp, 3, activation="lrelu", clamp=clamp)
        self.conv1 = EqualConv2d(tmp, out, 3, down=2, activation="lrelu", clamp=clamp)
        self.skip = EqualConv2d(tmp, out, 1, down=2, bias=False)

    def from_image(self, img: Tensor) -> Tensor:
        x, ctx = _block_precision(img, self.fp32)
        with ctx:
            return self.fromrgb(x)

    def forward(self, x: Tensor) -> Tensor:
        x, ctx = _block_precision(x, self.fp32)
        with ctx:
            return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


def minibatch_stddev(x: Tensor, group_size: int, num_channels: int = 1) -> Tensor:
    """Append the minibatch standard deviation as ``num_channels`` extra feature maps.

    The batch is split into groups of ``g`` samples (``g`` = the largest divisor
    of the batch not above ``group_size``; sample ``i`` joins group ``i mod (B/g)``)
    and the features into ``num_channels`` groups; each sample gets
    ``mean_{c,h,w} sqrt(var_group(x) + 1e-8)`` of its group, computed in fp32.
    """
    batch, channels, height, width = x.shape
    if channels % num_channels:
        raise ValueError(f"{channels} channels do not split into {num_channels} stddev groups")
    g = max(d for d in range(1, min(group_size, batch) + 1) if batch % d == 0)
    y = x.float().reshape(g, batch // g, num_channels, channels // num_channels, height, width)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [B/g, num_channels]
    y = y.reshape(-1, num_channels, 1, 1).repeat(g, 1, height, width)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4x4 head (fp32): minibatch stddev, 3x3 conv, FC, output FC, projection.

    ``h = fc(flatten(conv(mbstd(x))))`` and ``out = fc_out(h)``; conditional:
    ``(out . cmap) / sqrt(cmap_dim)``; unconditional: the single output. With
    ``classes`` > 0 an auxiliary classifier ``aux(h)`` (one linear layer on the
    same features) gives that many class logits (AC-GAN, :meth:`with_classes`).
    """

    def __init__(self, config: NetworkConfig, cmap_dim: int, classes: int = 0) -> None:
        super().__init__()
        ch = config.channels(4)
        clamp = config.conv_clamp
        self.group_size, self.num_channels, self.cmap_dim = config.mbstd_group_size, config.mbstd_num_channels, cmap_dim
        self.fromrgb = EqualConv2d(config.img_channels, ch, 1, activation="lrelu", clamp=clamp)
        self.conv = EqualConv2d(ch + config.mbstd_num_channels, ch, 3, activation="lrelu", clamp=clamp)
        self.fc = EqualLinear(ch * 16, ch, activation="lrelu")
        self.out = EqualLinear(ch, cmap_dim if cmap_dim > 0 else 1)
        self.aux = EqualLinear(ch, classes) if classes > 0 else None

    def from_image(self, img: Tensor) -> Tensor:
        with autocast_off(img.device.type):
            return self.fromrgb(img.float())

    def _features(self, x: Tensor) -> Tensor:
        x = minibatch_stddev(x.float(), self.group_size, self.num_channels)
        return self.fc(self.conv(x).flatten(1))

    def _logits(self, h: Tensor, cmap: Tensor | None) -> Tensor:
        x = self.out(h)
        if cmap is None:
            return x.squeeze(1)
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)

    def forward(self, x: Tensor, cmap: Tensor | None) -> Tensor:
        with autocast_off(x.device.type):
            return self._logits(self._features(x), cmap)

    def with_classes(self, x: Tensor, cmap: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(logits [B], class logits [B, classes])`` from one pass through the head."""
        if self.aux is None:
            raise ValueError("this discriminator has no auxiliary classifier (build it with classifier=True)")
        with autocast_off(x.device.type):
            h = self._features(x)
            return self._logits(h, cmap), self.aux(h)


class Discriminator(nn.Module):
    """Residual conditional discriminator; the input resolution is read from the image size.

    ``D(img, c) -> logits [B]`` (fp32). Conditioning by projection: ``cmap =
    mapping(c)`` (a :class:`MappingNetwork` without ``z``, ``cmap_dim =
    channels(4)``) is dotted with the head's output and scaled by
    ``1/sqrt(cmap_dim)``. With ``classifier=True`` the head also holds an
    auxiliary classifier of the ``c_dim`` condition values (AC-GAN), read
    through :meth:`with_classes`; it is built last, so the other parameters
    draw the same initial values with or without it.
    """

    def __init__(self, config: NetworkConfig, *, classifier: bool = False) -> None:
        super().__init__()
        if classifier and config.c_dim < 1:
            raise ValueError("an auxiliary classifier needs conditions (c_dim > 0)")
        self.config = config
        self.c_dim, self.img_resolution, self.img_channels = config.c_dim, config.resolution, config.img_channels
        self.block_resolutions = tuple(2**i for i in range(int(math.log2(config.resolution)), 2, -1))
        self.blocks = nn.ModuleDict({f"b{res}": DiscriminatorBlock(config, res) for res in self.block_resolutions})
        cmap_dim = config.channels(4) if config.c_dim > 0 else 0
        self.mapping = (
            MappingNetwork(
                0, config.c_dim, cmap_dim, embed_dim=config.embed_dim, num_layers=config.d_mapping_layers,
                lr_mul=config.mapping_lr_mul, w_avg_beta=None,
            )
            if config.c_dim > 0
            else None
        )
        self.b4 = DiscriminatorEpilogue(config, cmap_dim, config.c_dim if classifier else 0)

    def _from_image(self, img: Tensor, res: int) -> Tensor:
        if res == 4:
            return self.b4.from_image(img)
        return self.blocks[f"b{res}"].from_image(img)  # type: ignore[operator]

    def _trunk(self, img: Tensor, c: Tensor | None, alpha: float) -> tuple[Tensor, Tensor | None]:
        """The 4x4 features entering the head and the condition map."""
        if img.ndim != 4 or img.shape[1] != self.img_channels or img.shape[2] != img.shape[3]:
            raise ValueError(f"images must be [B, {self.img_channels}, r, r], got {tuple(img.shape)}")
        res = img.shape[-1]
        _check_resolution(res, self.img_resolution)
        _check_alpha(alpha)
        cmap = None
        if self.mapping is not None:
            if c is None or c.shape != (img.shape[0], self.c_dim):
                got = None if c is None else tuple(c.shape)
                raise ValueError(f"c must be [{img.shape[0]}, {self.c_dim}], got {got}")
            cmap = self.mapping(None, c)
        x = self._from_image(img, res)
        if res > 4:
            x = self.blocks[f"b{res}"](x)
            if alpha < 1.0:
                x = torch.lerp(self._from_image(downsample2d(img), res // 2).to(x.dtype), x, alpha)
            for lower in self.block_resolutions:
                if lower < res:
                    x = self.blocks[f"b{lower}"](x)
        return x, cmap

    def forward(self, img: Tensor, c: Tensor | None, *, alpha: float = 1.0) -> Tensor:
        return self.b4(*self._trunk(img, c, alpha))

    def with_classes(self, img: Tensor, c: Tensor | None, *, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(logits [B], class logits [B, c_dim])`` (fp32) of one pass; needs ``classifier=True``."""
        return self.b4.with_classes(*self._trunk(img, c, alpha))


def build_networks(config: NetworkConfig, *, classifier: bool = False) -> tuple[Generator, Discriminator]:
    """A new generator and discriminator for ``config`` (CPU, fp32, training mode).

    ``classifier``: give the discriminator its auxiliary classifier (:class:`Discriminator`).
    """
    config.validate()
    return Generator(config), Discriminator(config, classifier=classifier)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "RESOLUTIONS",
    "PRESETS",
    "NetworkConfig",
    "MappingNetwork",
    "SynthesisNetwork",
    "Generator",
    "Discriminator",
    "build_networks",
    "fade_images",
    "minibatch_stddev",
    "count_parameters",
]
