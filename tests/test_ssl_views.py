"""Views of the pretext tasks: rotations, relative-location patches, crops, jitter, blur."""

from __future__ import annotations

import torch

from ssl.views import (
    GRID,
    gaussian_blur,
    intensity_jitter,
    location_patches,
    patch_size,
    random_grayscale,
    resized_crops,
    rotations,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rotation_labels_match_the_rotations() -> None:
    images = torch.rand(3, 1, 8, 8)
    views, labels = rotations(images)
    assert views.shape == (12, 1, 8, 8) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for view, label, source in zip(views, labels, images.repeat(4, 1, 1, 1), strict=True):
        # turning the view back by the label's quarter turns gives the original image
        torch.testing.assert_close(torch.rot90(view, -int(label), dims=(1, 2)), source)


def test_location_patches_and_labels_match_their_grid_cells() -> None:
    size = 30  # cells of 10 px, patches of 8 px
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cell_id = (rows // (size // GRID)) * GRID + cols // (size // GRID)  # 0..8, row-major
    images = torch.stack([cell_id.float(), cell_id.float() + 100])[:, None]  # two images, one channel
    centres, neighbours, labels = location_patches(images, _gen())
    p = patch_size(size)
    assert p == 8 and centres.shape == neighbours.shape == (16, 1, p, p) and labels.shape == (16,)
    assert labels.tolist() == [i for i in range(8) for _ in range(2)]
    outer = [0, 1, 2, 3, 5, 6, 7, 8]
    for row in range(16):
        image = row % 2
        assert torch.all(centres[row] == 4 + 100 * image)  # the centre cell, wholly inside it
        assert torch.all(neighbours[row] == outer[int(labels[row])] + 100 * image)


def test_location_patches_land_at_random_offsets_inside_their_cells() -> None:
    images = torch.rand(4, 1, 45, 45)
    a = location_patches(images, _gen(0))[1]
    b = location_patches(images, _gen(1))[1]
    assert not torch.equal(a, b)
    torch.testing.assert_close(location_patches(images, _gen(0))[1], a)


def test_resized_crops_shapes_range_and_full_crop_identity() -> None:
    images = torch.rand(5, 1, 32, 32)
    crops = resized_crops(images, 16, (0.2, 1.0), _gen())
    assert crops.shape == (5, 1, 16, 16) and crops.min() >= 0 and crops.max() <= 1
    whole = resized_crops(images, 32, (1.0, 1.0), _gen(), ratio=(1.0, 1.0))
    torch.testing.assert_close(whole, images, atol=1e-5, rtol=0)  # area 1, aspect 1: the image itself


def test_radiographs_are_never_mirrored_rgb_may_be() -> None:
    ramp = torch.linspace(0, 1, 32).expand(32, 32)
    gray = ramp.expand(64, 1, 32, 32).contiguous()
    crops = resized_crops(gray, 32, (1.0, 1.0), _gen(), ratio=(1.0, 1.0), flip=True)
    assert torch.all(crops[..., -1] > crops[..., 0])
    rgb = ramp.expand(64, 3, 32, 32).contiguous()
    crops = resized_crops(rgb, 32, (1.0, 1.0), _gen(), ratio=(1.0, 1.0), flip=True)
    mirrored = (crops[:, 0, 0, -1] < crops[:, 0, 0, 0]).float().mean()
    assert 0.2 < mirrored < 0.8


def test_intensity_jitter_keeps_range_and_p_zero_is_identity() -> None:
    images = torch.rand(8, 1, 16, 16)
    torch.testing.assert_close(intensity_jitter(images, 0.0, 0.4, _gen()), images)
    out = intensity_jitter(images, 1.0, 0.4, _gen())
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, images)


def test_gaussian_blur_keeps_constants_smooths_noise_and_p_zero_is_identity() -> None:
    images = torch.rand(4, 1, 64, 64)
    torch.testing.assert_close(gaussian_blur(images, 0.0, _gen()), images)
    flat = torch.full((2, 3, 64, 64), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0, _gen()), flat)
    assert gaussian_blur(images, 1.0, _gen()).std() < images.std()


def test_random_grayscale_leaves_radiographs_and_greys_rgb() -> None:
    gray = torch.rand(4, 1, 8, 8)
    assert torch.equal(random_grayscale(gray, 1.0, _gen()), gray)
    rgb = torch.rand(4, 3, 8, 8)
    out = random_grayscale(rgb, 1.0, _gen())
    torch.testing.assert_close(out[:, 0], out[:, 2])
    torch.testing.assert_close(out[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
