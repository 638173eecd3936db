"""The one sample convention of the project.

Every data set yields a ``dict`` (MONAI's dictionary style) with these keys:

============  ==========================================================
key           value
============  ==========================================================
``image``     ``torch.float32`` tensor ``[C, H, W]`` with values in [0, 1];
              C = 1 for radiographs (0 = black, i.e. no attenuation shown
              dark as on a film: air is dark, bone is bright) and C = 3
              (RGB) for ISIC dermoscopy.
``label``     ``int`` class index of the active label task, ``-1`` when the
              data set is read without a task.
``findings``  ``torch.float32`` ``[K]`` finding vector of the data set's
              :class:`~datasets.findings.FindingSchema` (1 / 0 / -1 / nan);
              absent for data sets without findings (ISIC, SIIM-COVID).
``id``        ``str`` sample identifier (relative path or image id).
``mask``      optional ``torch.float32`` ``[1, H, W]`` binary lung mask.
``index``     optional ``int``: the sample's row in its split (synthetic
              stores; what a per-image memory such as ODC's is keyed by).
============  ==========================================================
"""

from __future__ import annotations

from typing import TypedDict

import torch

IMAGE = "image"
LABEL = "label"
FINDINGS = "findings"
ID = "id"
MASK = "mask"
INDEX = "index"
CHANNELS: tuple[int, ...] = (1, 3)


def check_channels(channels: int) -> None:
    """Refuse channel counts other than 1 (radiographs) and 3 (dermoscopy) with a ``ValueError``."""
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 or 3, not {channels}")


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] as uint8 grey levels ``round(255 x)``, clamped to [0, 255] (same device)."""
    return (image.float() * 255.0).round().clamp(0, 255).to(torch.uint8)


class Sample(TypedDict, total=False):
    image: torch.Tensor
    label: int
    findings: torch.Tensor
    id: str
    mask: torch.Tensor
    index: int
