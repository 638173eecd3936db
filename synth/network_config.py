"""The architecture record of the GAN's networks (:class:`NetworkConfig`), its presets and resolutions."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from plumbing.config import dataclass_from_dict
from plumbing.errors import UserError
from plumbing.lookup import look_up

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
        return cls(**{**look_up("network preset", name, PRESETS), **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # StyleGAN2-ADA paper256 widths (channel_base 16384, channel_max 512, 8 mapping layers)
    "paper": {},
    # a few-hundred-thousand-parameter model that trains on a CPU at 32-64 px
    "tiny": {"channel_base": 1024, "channel_max": 64, "z_dim": 64, "w_dim": 64,
             "mapping_layers": 2, "d_mapping_layers": 2},
}
