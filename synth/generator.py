"""The class-conditional StyleGAN2 generator: mapping network (``z, c -> w``) and synthesis network (``ws -> image``).

The progressive growing and mixed precision it follows are described in :mod:`synth.networks`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from synth.layers import (
    NOISE_MODES,
    EqualLinear,
    ModulatedConv2d,
    NoiseMode,
    autocast_off,
    block_precision,
    check_alpha,
    check_resolution,
    normalize_2nd_moment,
    upsample2d,
)
from synth.network_config import NetworkConfig


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
        x, ctx = block_precision(x, self.fp32)
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
        check_resolution(res, self.resolution)
        check_alpha(alpha)
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
        check_resolution(res, self.img_resolution)
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
