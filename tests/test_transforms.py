"""MONAI dictionary transforms: loading, square resize, training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from datasets.sample import IMAGE, MASK
from datasets.transforms import compose, load_transform, resize, square_resize, train_augment


def ramp(channels: int = 1, height: int = 40, width: int = 48) -> torch.Tensor:
    """``[C, H, W]`` float32 in [0, 1]: the column index / (W - 1)."""
    row = torch.linspace(0.0, 1.0, width)
    return row.expand(channels, height, width).clone()


def square_mask(height: int = 48, width: int = 48) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[:, 12:36, 16:40] = 1.0
    return mask


def test_square_resize_keeps_the_central_square() -> None:
    image = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 4, 6) / 24
    out = square_resize(image, 4)
    assert out.shape == (1, 4, 4)
    assert torch.equal(out, image[:, :, 1:5])  # one column dropped at each side
    tall = square_resize(image.transpose(1, 2), 4)
    assert torch.equal(tall, image.transpose(1, 2)[:, 1:5, :])


def test_resize_shapes_ranges_and_binary_masks() -> None:
    sample = {IMAGE: ramp(3), MASK: square_mask(40, 48)}
    out = resize(32)(sample)
    assert out[IMAGE].shape == (3, 32, 32) and out[MASK].shape == (1, 32, 32)
    assert out[IMAGE].min() >= 0 and out[IMAGE].max() <= 1
    assert set(out[MASK].unique().tolist()) <= {0.0, 1.0}
    # The crop drops 4 columns at each side of 48: the ramp now spans (4/47 .. 43/47).
    assert out[IMAGE][0, 0, 0].item() == pytest.approx(4 / 47, abs=0.02)
    assert out[IMAGE][0, 0, -1].item() == pytest.approx(43 / 47, abs=0.02)
    upsampled = resize(64)({IMAGE: ramp()})[IMAGE]
    assert upsampled.shape == (1, 64, 64)


def test_load_transform_reads_files(tmp_path) -> None:
    pixels = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = load_transform(IMAGE, channels=1)({IMAGE: tmp_path / "a.png", "id": "a"})
    assert out["id"] == "a"
    assert out[IMAGE].dtype == torch.float32 and out[IMAGE].shape == (1, 20, 30)
    assert torch.allclose(out[IMAGE][0], torch.from_numpy(pixels / 255.0).float())
    rgb = load_transform(IMAGE, channels=3)({IMAGE: tmp_path / "a.png"})[IMAGE]
    assert rgb.shape == (3, 20, 30) and torch.equal(rgb[0], rgb[2])


def test_compose_returns_plain_float32_tensors() -> None:
    out = compose(1, 32, augment=True, seed=0)({IMAGE: ramp(), MASK: square_mask(40, 48)})
    for key in (IMAGE, MASK):
        assert type(out[key]) is torch.Tensor and not isinstance(out[key], MetaTensor)
        assert out[key].dtype == torch.float32
    assert out[IMAGE].shape == (1, 32, 32) and out[MASK].shape == (1, 32, 32)
    assert out[IMAGE].min() >= 0 and out[IMAGE].max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_is_reproducible_under_a_seed(channels: int) -> None:
    sample = {IMAGE: ramp(channels, 48, 48)}
    first = [compose(channels, 32, augment=True, seed=5)(sample)[IMAGE] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    pipeline = compose(channels, 32, augment=True, seed=5)
    draws = [pipeline(sample)[IMAGE] for _ in range(3)]
    assert torch.equal(draws[0], first[0])
    assert not torch.equal(draws[0], draws[1])  # the generator advances between samples
    other = compose(channels, 32, augment=True, seed=6)(sample)[IMAGE]
    plain = compose(channels, 32)(sample)[IMAGE]
    assert not torch.equal(other, first[0]) and not torch.equal(plain, first[0])


def test_affine_moves_image_and_mask_together() -> None:
    mask = square_mask()
    pipeline = compose(1, 48, augment=True, seed=11)
    for _ in range(5):
        out = pipeline({IMAGE: mask.clone(), MASK: mask.clone()})
        assert set(out[MASK].unique().tolist()) <= {0.0, 1.0}
        assert not torch.equal(out[MASK], mask)
        # The image (bilinear) and the mask (nearest) went through the same geometry.
        agree = ((out[IMAGE] > 0.5) == (out[MASK] > 0.5)).float().mean().item()
        assert agree > 0.97


def test_flips_only_for_colour_images() -> None:
    def flips(channels: int) -> int:
        """How many of 40 augmented draws of an asymmetric ramp come out mirrored (left brighter)."""
        pipeline = compose(channels, 32, augment=True, seed=1)
        outs = [pipeline({IMAGE: ramp(channels, 48, 48)})[IMAGE] for _ in range(40)]
        return sum(int(o[0, :, :8].mean() > o[0, :, -8:].mean()) for o in outs)

    assert flips(1) == 0
    assert 8 <= flips(3) <= 32


def test_invalid_channels() -> None:
    with pytest.raises(ValueError):
        train_augment(2)


def test_augmentation_follows_the_keys() -> None:
    image, mask = ramp(1, 32, 32), square_mask(32, 32)
    out = train_augment(1, keys=("img", "seg"))
    out.set_random_state(seed=2)
    got = out({"img": image, "seg": mask, "other": 1})
    assert not torch.equal(got["img"], image) and set(got["seg"].unique().tolist()) <= {0.0, 1.0}
    assert got["other"] == 1 and got["seg"].shape == (1, 32, 32)
    assert out({"seg": mask})["seg"] is mask  # no image: nothing to do
