"""The residual discriminator: blocks, minibatch standard deviation and a conditional projection head (+ AC-GAN).

The progressive growing and mixed precision it follows are described in :mod:`synth.networks`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from synth.generator import MappingNetwork
from synth.layers import (
    EqualConv2d,
    EqualLinear,
    autocast_off,
    block_precision,
    check_alpha,
    check_resolution,
    downsample2d,
)
from synth.network_config import NetworkConfig


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
        x, ctx = block_precision(img, self.fp32)
        with ctx:
            return self.fromrgb(x)

    def forward(self, x: Tensor) -> Tensor:
        x, ctx = block_precision(x, self.fp32)
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
        check_resolution(res, self.img_resolution)
        check_alpha(alpha)
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
