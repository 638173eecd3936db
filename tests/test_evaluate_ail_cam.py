"""Tests for :mod:`evaluate.ail.cam`: AIL, its summary, Grad-CAM / CAM maps on a hand-built classifier, the PNG grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from evaluate.ail.cam import CONTOUR_RGB, attention_inside_lungs, overlay_grid, saliency_maps, summarise_ail
from plumbing.errors import UserError

SIZE = 32


def columns_map(values: torch.Tensor) -> torch.Tensor:
    """A [1, 1, SIZE, SIZE] map whose every row is ``values`` [SIZE]."""
    return values.float().reshape(1, 1, 1, SIZE).expand(1, 1, SIZE, SIZE).clone()


def right_mask(start: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., start:] = 1.0
    return mask


# --- AIL -----------------------------------------------------------------------------------------------------------


def test_ail_inside_outside_and_zero() -> None:
    mask = torch.zeros(3, 1, SIZE, SIZE)
    mask[:, :, 8:24, 8:24] = 0.6  # > 0.5 counts as lung
    saliency = torch.zeros(3, 1, SIZE, SIZE)
    saliency[0, :, 10:20, 12:22] = torch.rand(10, 10) + 0.1  # inside
    saliency[1, :, :4, :] = 2.0  # entirely outside
    ail = attention_inside_lungs(saliency, mask)  # image 2: all zero
    assert ail.shape == (3,) and ail.dtype == torch.float32
    torch.testing.assert_close(ail, torch.tensor([1.0, 0.0, 0.0]))


def test_ail_split_map_closed_form() -> None:
    saliency = columns_map(torch.arange(1, SIZE + 1))  # column x carries x + 1
    mask = right_mask(24)
    # sum_{x=24}^{31} (x + 1) / sum_{x=0}^{31} (x + 1) = (8 * (25 + 32) / 2) / (32 * 33 / 2) = 228 / 528
    torch.testing.assert_close(attention_inside_lungs(saliency, mask), torch.tensor([228.0 / 528.0]))


def test_ail_rejects_bad_input() -> None:
    saliency = torch.ones(2, 1, SIZE, SIZE)
    with pytest.raises(UserError, match="differs"):
        attention_inside_lungs(saliency, torch.ones(2, 1, 16, 16))
    with pytest.raises(UserError, match="non-negative"):
        attention_inside_lungs(saliency - 2.0, torch.ones(2, 1, SIZE, SIZE))


def test_summarise_ail_matches_numpy() -> None:
    values = np.array([0.1, 0.5, 0.9, 0.3, 0.7, 0.2])
    labels = np.array([0, 0, 1, 1, 1, 0])
    summary = summarise_ail(torch.tensor(values, dtype=torch.float32), torch.tensor(labels), ["a", "b", "empty"])
    json.dumps(summary)  # JSON-ready
    assert summary["n"] == 6
    assert summary["mean"] == pytest.approx(values.mean()) and summary["std"] == pytest.approx(values.std())
    for k, name in enumerate(["a", "b"]):
        part = values[labels == k]
        got = summary["per_class"][name]
        assert got["n"] == part.size
        assert got["mean"] == pytest.approx(part.mean()) and got["std"] == pytest.approx(part.std())
    assert summary["per_class"]["empty"] == {"mean": None, "std": None, "n": 0}
    with pytest.raises(UserError):
        summarise_ail(torch.tensor([0.5]), torch.tensor([3]), ["a", "b"])


# --- saliency maps -------------------------------------------------------------------------------------------------


class HalfGate(nn.Module):
    """Keeps the left half of channel 0 and the right half of channel 1."""

    def __init__(self, width: int) -> None:
        super().__init__()
        gate = torch.zeros(1, 2, 1, width)
        gate[:, 0, :, : width // 2] = 1.0
        gate[:, 1, :, width // 2 :] = 1.0
        self.register_buffer("gate", gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate


class TinyNet(nn.Module):
    """Class 0's logit is the mean brightness of the left half, class 1's of the right half.

    ``body`` (stride 2, 16 x 16 features) is followed by an in-place ReLU: the backward-hook pitfall.
    """

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.body = nn.Sequential(conv, HalfGate(SIZE // 2))
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, 0, 1, 1] = 1.0
            conv.bias.zero_()
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(x)).mean(dim=(2, 3)))


class ReusedAct(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.act(self.body(x))).mean(dim=(2, 3)))


def bright_images(n: int) -> torch.Tensor:
    return 0.5 + 0.5 * torch.rand(n, 1, SIZE, SIZE)  # bright on both halves


def left_fraction(maps: torch.Tensor) -> torch.Tensor:
    return maps[..., : SIZE // 2].sum(dim=(1, 2, 3)) / maps.sum(dim=(1, 2, 3))


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_saliency_follows_requested_class(method: str) -> None:
    model = TinyNet()
    images = bright_images(4)
    maps = saliency_maps(model, images, torch.tensor([0, 1, 1, 0]), "body", method=method)
    assert maps.shape == (4, 1, SIZE, SIZE)
    assert maps.min() >= 0 and torch.allclose(maps.amax(dim=(1, 2, 3)), torch.ones(4))
    frac = left_fraction(maps)
    assert (frac[[0, 3]] > 0.9).all() and (frac[[1, 2]] < 0.1).all(), frac
    # grouping by class gives each image its own map, the same as one image at a time
    one = saliency_maps(model, images[1:2], torch.tensor([1]), "body", method=method)
    torch.testing.assert_close(maps[1:2], one)


@pytest.mark.parametrize("method", ["gradcam", "cam"])
@pytest.mark.parametrize("training", [True, False])
def test_saliency_leaves_model_as_it_was(method: str, training: bool) -> None:
    model = TinyNet().train(training)
    model.head.weight.grad = marker = torch.full_like(model.head.weight, 7.0)
    with torch.no_grad():
        maps = saliency_maps(model, bright_images(2), torch.tensor([0, 1]), "body", method=method)
    assert (left_fraction(maps) - torch.tensor([1.0, 0.0])).abs().max() < 0.1
    assert all(m.training == training for m in model.modules())
    assert model.act.inplace
    assert model.head.weight.grad is marker and model.body[0].weight.grad is None
    assert not model.body._forward_hooks and not model.body._backward_hooks
    # the model still trains normally afterwards
    model(bright_images(2)).sum().backward()


def test_saliency_works_on_frozen_model() -> None:
    model = TinyNet().requires_grad_(False)
    maps = saliency_maps(model, bright_images(1), torch.tensor([1]), "body")
    assert left_fraction(maps).item() < 0.1


def test_saliency_rejects_bad_arguments() -> None:
    model, images = TinyNet(), bright_images(2)
    with pytest.raises(UserError, match="gradcam, cam"):
        saliency_maps(model, images, torch.tensor([0, 1]), "body", method="lime")
    with pytest.raises(UserError, match="layer 'layer4' not found; the model has body, body.0"):
        saliency_maps(model, images, torch.tensor([0, 1]), "layer4")
    with pytest.raises(UserError, match="layer 'fc' not found"):
        saliency_maps(model, images, torch.tensor([0, 1]), "body", method="cam", fc_layer="fc")
    with pytest.raises(UserError, match="one integer per image"):
        saliency_maps(model, images, torch.tensor([0]), "body")
    with pytest.raises(UserError, match="must lie in"):
        saliency_maps(model, images, torch.tensor([0, 2]), "body")
    with pytest.raises(UserError, match="runs 2 times"):
        saliency_maps(ReusedAct(), images, torch.tensor([0, 1]), "act")


# --- overlay grid --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_grid_png(tmp_path: Path, channels: int) -> None:
    n, columns = 3, 2
    images = torch.rand(n, channels, SIZE, SIZE) * 0.5
    maps = columns_map(torch.linspace(0, 1, SIZE)).expand(n, 1, SIZE, SIZE)  # cold left, hot right
    masks = torch.zeros(n, 1, SIZE, SIZE)
    masks[:, :, 8:24, 8:24] = 1.0
    path = tmp_path / "out" / "grid.png"
    overlay_grid(images, maps, masks, [0, 1, 0], [0, 0, 0], ["normal", "nodule"], path, columns=columns)

    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left
    with Image.open(path) as png:
        assert png.format == "PNG"
        pixels = np.asarray(png.convert("RGB")).astype(int)
    tile = 128  # 32 px upscaled 4x
    assert pixels.shape[1] == columns * tile and pixels.shape[0] % 2 == 0  # two rows of tiles with captions
    cell = pixels.shape[0] // 2
    assert cell > tile
    first = pixels[:tile, :tile]
    assert (first == CONTOUR_RGB).all(axis=-1).any()  # lung contour
    assert (first[:, 8 * 4 - 1] == CONTOUR_RGB).all(axis=-1).sum() == 0  # contour lies inside the mask
    assert (first[8 * 4 : 24 * 4, 8 * 4] == CONTOUR_RGB).all()  # ... on its border
    cold, hot = first[4, 4], first[4, -5]
    assert cold[2] > cold[0] + 40 and cold[2] > cold[1] + 40  # jet blue where the map is low
    assert hot[0] > hot[1] + 40 and hot[0] > hot[2] + 40  # jet red where it is high
    caption = pixels[tile:cell, tile : 2 * tile]  # second tile's caption: wrong prediction
    assert ((caption[..., 0] > 150) & (caption[..., 1] < 90) & (caption[..., 2] < 90)).any()  # red text
    right = pixels[tile:cell, :tile]  # first tile's caption: right, black text
    assert (right.max(axis=-1) < 90).any() and not ((right[..., 0] > 150) & (right[..., 1] < 90)).any()
    assert (pixels[cell:, tile:] == 255).all()  # the empty cell stays white
