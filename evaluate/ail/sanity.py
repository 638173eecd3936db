"""The model-randomisation sanity check of saliency maps (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains a model must depend on what the model learnt: the maps
of the same architecture with random weights, for the same images and
classes, must differ from the trained model's. A method that passes an
edge detector's output through (maps alike for trained and random weights)
says nothing about the model, and neither would an AIL computed from it.

* :func:`randomised_copy`: a copy of a model with every parameter re-drawn by
  its module's own initialisation (``reset_parameters``, seeded, on the CPU
  so that the draw is the same on every device; a batch norm's also resets
  its running statistics) - the last stage of the paper's cascading
  randomisation, where all layers are random.
* :func:`rank_correlation`: the Spearman rank correlation of two maps of each
  image, ``rho = cov(r(a), r(b)) / (std(r(a)) std(r(b)))`` with ``r`` the
  ranks of the pixels (ties get their mean rank), after average pooling both
  maps to ``size x size`` (the maps are upsampled from a coarse layer, so
  their pixels are not independent; pooling keeps the layer's resolution
  and makes the ranking cheap). 1 for maps of the same order, -1 for
  reversed ones; 0 when either map is constant.

The check passes when the mean correlation over the images is below
:data:`SANITY_MAX_CORRELATION` (the paper's trained and random Grad-CAM maps
rank-correlate at about 0.2 to 0.4 on ImageNet).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from plumbing.errors import UserError

SANITY_MAX_CORRELATION = 0.5
"""The mean rank correlation below which a model's maps count as differing from its randomised copy's."""
POOLED_SIZE = 16


@torch.no_grad()
def randomised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` on ``model``'s device whose parameters are re-drawn on the CPU by each module's
    ``reset_parameters`` from the CPU generator seeded with ``seed`` (its state is restored afterwards)."""
    device = next(model.parameters()).device
    out = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for module in out.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return out.to(device)


def _mean_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``[B, N]`` of every row's values counted from 0, tied values sharing their mean rank."""
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values, right=False)
    up_to = torch.searchsorted(ordered, values, right=True)
    return (below + up_to - 1).double() / 2


def rank_correlation(first: torch.Tensor, second: torch.Tensor, size: int = POOLED_SIZE) -> torch.Tensor:
    """Spearman's ``rho`` ``[B]`` of the maps ``first`` and ``second`` ``[B, 1, H, W]`` of each image, both
    average-pooled to ``size x size`` (module docstring)."""
    if first.shape != second.shape or first.ndim != 4 or first.shape[1] != 1:
        raise UserError(f"two [B, 1, H, W] maps of one shape are needed, not {tuple(first.shape)} and "
                        f"{tuple(second.shape)}")
    ranks = [_mean_ranks(F.adaptive_avg_pool2d(m.float(), size).flatten(1).contiguous()) for m in (first, second)]
    centred = [r - r.mean(dim=1, keepdim=True) for r in ranks]
    norms = centred[0].norm(dim=1) * centred[1].norm(dim=1)
    covariance = (centred[0] * centred[1]).sum(dim=1)
    return torch.where(norms > 0, covariance / norms.clamp_min(1e-300), torch.zeros_like(norms)).float()
