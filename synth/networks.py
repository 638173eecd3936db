"""Class-conditional StyleGAN2 generator and residual discriminator, with progressive growing.

Generator (:mod:`synth.generator`) = :class:`~synth.generator.MappingNetwork` (``z, c -> w``) +
:class:`~synth.generator.SynthesisNetwork`
(``ws -> image``). Discriminator (:mod:`synth.discriminator`) = residual blocks, minibatch standard deviation
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
same way with :func:`synth.layers.fade_images`.

Mixed precision: the networks run under ``torch.autocast`` (bf16 or fp16).
The mapping networks, styles, demodulation coefficients, the generator's skip
image and the discriminator's 4x4 epilogue always run in fp32, and blocks below
the ``num_fp16_res`` highest resolutions run with autocast off (as the reference
runs only its top resolutions in fp16); activations are clamped to
``conv_clamp``. Both networks accept channels_last tensors (``model.to(memory_format=torch.channels_last)``).
"""

from __future__ import annotations

from synth.discriminator import Discriminator
from synth.generator import Generator
from synth.network_config import NetworkConfig


def build_networks(config: NetworkConfig, *, classifier: bool = False) -> tuple[Generator, Discriminator]:
    """A new generator and discriminator for ``config`` (CPU, fp32, training mode).

    ``classifier``: give the discriminator its auxiliary classifier (:class:`Discriminator`).
    """
    config.validate()
    return Generator(config), Discriminator(config, classifier=classifier)
