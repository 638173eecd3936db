"""datasets.augment: the batched training augmentation (geometry conventions, intensity, distributions)."""

from __future__ import annotations

import math

import pytest
import torch

from datasets.augment import AugmentParams, BatchAugment, apply, sample_params


def params(
    n: int = 1,
    *,
    theta_deg: float = 0.0,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    brightness: float = 1.0,
    gamma: float = 1.0,
    flip: bool = False,
) -> AugmentParams:
    """Hand-set parameters, built by the module docstring's formula ``A = R / s``, ``b = -A (2 t)``."""
    t = math.radians(theta_deg)
    a = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) / scale
    b = -(a @ (2 * torch.tensor(shift))[:, None])
    matrix = torch.cat([a, b], 1).expand(n, 2, 3).clone()
    return AugmentParams(matrix, torch.full((n,), brightness), torch.full((n,), gamma), torch.full((n,), flip))


def ramp(size: int = 16, channels: int = 1) -> torch.Tensor:
    """``[1, C, size, size]``: the value at column ``j`` is the column's normalised x, mapped to [0, 1]."""
    x = (torch.arange(size) + 0.5) / size
    return x.expand(1, channels, size, size).clone()


def test_neutral_parameters_change_nothing() -> None:
    x = torch.rand(3, 1, 16, 16)
    out, _ = apply(x, params(3))
    assert torch.allclose(out, x, atol=1e-6)


def test_shift_moves_the_content_by_whole_pixels() -> None:
    x = torch.rand(1, 1, 16, 16)
    out, _ = apply(x, params(shift=(1 / 16, 0.0)))  # one pixel to the right
    assert torch.allclose(out[..., 1:], x[..., :-1], atol=1e-6)
    assert torch.all(out[..., 0] == 0)  # zero padding
    down, _ = apply(x, params(shift=(0.0, 2 / 16)))  # two pixels down
    assert torch.allclose(down[..., 2:, :], x[..., :-2, :], atol=1e-6)


def test_scale_magnifies_about_the_centre() -> None:
    out, _ = apply(ramp(), params(scale=2.0))
    # x_out = x_in * 2 around the centre, so the ramp's slope halves: value = (x_norm / 2 + 1) / 2
    expected = 0.5 + (ramp() - 0.5) / 2
    assert torch.allclose(out, expected, atol=1e-5)


def test_rotation_by_a_quarter_turn_is_rot90() -> None:
    x = torch.rand(1, 1, 8, 8)
    out, _ = apply(x, params(theta_deg=90.0))
    # A = R(theta): the output at (x, y) reads the input at (-y, x), which is rot90 from rows toward columns
    assert torch.allclose(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)


def test_image_and_mask_share_the_geometry_and_masks_stay_binary() -> None:
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, 8:24, 10:26] = 1.0
    g = torch.Generator().manual_seed(0)
    images, masks = BatchAugment(1)(mask.clone(), g, masks=mask.clone())
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    p = sample_params(4, 1, torch.Generator().manual_seed(0))
    geometric, _ = apply(mask.clone(), AugmentParams(p.matrix, torch.ones(4), torch.ones(4), p.flip))
    agree = ((geometric > 0.5) == (masks > 0.5)).float().mean().item()
    assert agree > 0.97 and not torch.equal(masks, mask)


def test_gamma_keeps_the_image_range_and_brightness_scales() -> None:
    x = 0.2 + 0.6 * torch.rand(1, 1, 16, 16)
    out, _ = apply(x, params(gamma=2.0))
    assert math.isclose(out.min().item(), x.min().item(), abs_tol=1e-5)
    assert math.isclose(out.max().item(), x.max().item(), abs_tol=1e-5)
    assert out.mean() < x.mean()  # gamma > 1 darkens the mid-tones
    bright, _ = apply(x, params(brightness=1.1))
    assert torch.allclose(bright, (x * 1.1).clamp(0, 1), atol=1e-6)


def test_flip_mirrors_colour_images() -> None:
    x = ramp(channels=3)
    out, _ = apply(x, params(flip=True))
    assert torch.allclose(out, x.flip(-1), atol=1e-6)


def test_parameter_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    grey = sample_params(4000, 1, g)
    a = grey.matrix[:, :, :2]
    scale = 1 / a.det().sqrt()
    angle = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0]))
    assert scale.min() >= 0.9 - 1e-5 and scale.max() <= 1.1 + 1e-5
    assert angle.abs().max() <= 10 + 1e-4 and angle.abs().max() > 9
    shift = -torch.linalg.solve(a, grey.matrix[:, :, 2:])[..., 0] / 2
    assert shift.abs().max() <= 0.05 + 1e-6
    assert 0.45 < (grey.brightness != 1).float().mean() < 0.55 and grey.brightness.sub(1).abs().max() <= 0.1 + 1e-6
    assert 0.45 < (grey.gamma != 1).float().mean() < 0.55
    assert grey.gamma.min() >= 0.8 and grey.gamma.max() <= 1.25 and not grey.flip.any()
    colour = sample_params(4000, 3, g)
    assert 0.45 < colour.flip.float().mean() < 0.55
    assert torch.all(colour.brightness == 1) and torch.all(colour.gamma == 1)


def test_reproducible_per_generator_and_batched_like_one_by_one() -> None:
    x = torch.rand(5, 1, 24, 24)
    first = BatchAugment(1)(x, torch.Generator().manual_seed(3))[0]
    assert torch.equal(first, BatchAugment(1)(x, torch.Generator().manual_seed(3))[0])
    assert not torch.equal(first, BatchAugment(1)(x, torch.Generator().manual_seed(4))[0])
    p = sample_params(5, 1, torch.Generator().manual_seed(3))
    one_by_one = [
        apply(
            x[i : i + 1],
            AugmentParams(p.matrix[i : i + 1], p.brightness[i : i + 1], p.gamma[i : i + 1], p.flip[i : i + 1]),
        )[0]
        for i in range(5)
    ]
    assert torch.allclose(torch.cat(one_by_one), first, atol=1e-6)
    assert first.min() >= 0 and first.max() <= 1 and first.shape == x.shape


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="channels"):
        BatchAugment(2)
    with pytest.raises(ValueError, match="channels"):
        sample_params(2, 4)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        apply(torch.rand(2, 1, 8, 8), params(3))


def test_half_precision_inputs_and_integer_masks() -> None:
    x = torch.rand(2, 1, 64, 64)
    p = sample_params(2, 1, torch.Generator().manual_seed(5))
    reference, _ = apply(x, p)
    for dtype in (torch.bfloat16, torch.float16):
        out, _ = apply(x.to(dtype), p)
        assert out.dtype == dtype and torch.isfinite(out.float()).all()
        assert (out.float() - reference).abs().max() < 0.02
    mask = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    mask[:, :, 16:48, 16:48] = 1
    _, moved = apply(x, p, mask)
    _, as_float = apply(x, p, mask.float())
    assert moved.dtype == torch.uint8 and torch.equal(moved.float(), as_float)
    with pytest.raises(ValueError, match="masks"):
        apply(x, p, torch.zeros(3, 1, 64, 64))


def test_apply_leaves_its_inputs_alone() -> None:
    x = torch.rand(3, 1, 16, 16)
    before = x.clone()
    apply(x, sample_params(3, 1, torch.Generator().manual_seed(0)))
    assert torch.equal(x, before)
