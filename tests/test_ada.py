"""ADA augmentation: operations, the twice-differentiable resampling, R1 through it, p control."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plumbing.errors import UserError
from synth.augment import AdaController, AugmentPipe, AugmentSpec, grid_resample
from synth.losses import r1_penalty
from synth.network_config import NetworkConfig
from synth.networks import build_networks

ONLY = dict.fromkeys(("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
                      "contrast", "lumaflip"), 0.0)


def only(**ops: float) -> AugmentSpec:
    return AugmentSpec(**{**ONLY, **ops})


def images(batch: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_p_zero_is_the_identity() -> None:
    x = images()
    out = AugmentPipe(AugmentSpec(lumaflip=1.0), p=0.0)(x)
    assert torch.equal(out, x)


def test_p_one_changes_every_image_and_stays_finite() -> None:
    x = images(16)
    out = AugmentPipe(AugmentSpec(lumaflip=1.0), p=1.0)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ((out - x).abs().flatten(1).amax(dim=1) > 1e-3).all()


def test_pixel_exact_operations() -> None:
    x = images(32)
    gen = torch.Generator().manual_seed(0)
    out = AugmentPipe(only(xflip=1.0), p=1.0)(x, generator=gen)
    same = (out - x).abs().flatten(1).amax(1) < 1e-5
    flipped = (out - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (same | flipped).all() and same.any() and flipped.any()
    out = AugmentPipe(only(rotate90=1.0), p=1.0)(x, generator=gen)
    matches = torch.stack([(out - torch.rot90(x, k, dims=(2, 3))).abs().flatten(1).amax(1) < 1e-5 for k in range(4)])
    assert matches.any(dim=0).all() and matches.any(dim=1).all()
    # integer translation: interior pixels are shifted copies of the input
    out = AugmentPipe(only(xint=1.0), p=1.0)(x, generator=gen)
    hits = 0
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            hits += int(((out - shifted)[..., 3:-3, 3:-3].abs().flatten(1).amax(1) < 1e-5).sum())
    assert hits >= 32  # every image (offsets of at most 2 px at size 16)


def test_intensity_operations_are_affine_per_image() -> None:
    x = images(16)
    out = AugmentPipe(only(brightness=1.0), p=1.0)(x, generator=torch.Generator().manual_seed(0))
    shift = (out - x).flatten(1)
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    assert shift[:, 0].std() == pytest.approx(0.2, rel=0.6)
    out = AugmentPipe(only(contrast=1.0), p=1.0)(x, generator=torch.Generator().manual_seed(0))
    ratio = (out / x).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    out = AugmentPipe(only(lumaflip=1.0), p=1.0)(x, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(o, i) or torch.equal(o, -i) for o, i in zip(out, x, strict=True))


def test_probability_matches_p() -> None:
    x = images(400, size=8)
    out = AugmentPipe(only(xfrac=1.0), p=0.3)(x, generator=torch.Generator().manual_seed(0))
    changed = ((out - x).abs().flatten(1).amax(1) > 1e-6).float().mean().item()
    assert changed == pytest.approx(0.3, abs=0.07)


def test_resampling_gradients_match_numerical_and_native() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    grid = torch.rand(2, 4, 3, 2, dtype=torch.float64, generator=gen) * 2.4 - 1.2
    assert torch.autograd.gradcheck(grid_resample, (x, grid))
    assert torch.autograd.gradgradcheck(grid_resample, (x, grid))
    weights = torch.randn(2, 1, 4, 3, dtype=torch.float64, generator=gen)
    out = grid_resample(x, grid)
    assert "GridResample" in type(out.grad_fn).__name__  # our twice-differentiable function, not the native op
    (ours,) = torch.autograd.grad((out * weights).sum(), x)
    native = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    (theirs,) = torch.autograd.grad((native * weights).sum(), x)
    torch.testing.assert_close(ours, theirs)
    # first-order gradient with respect to the grid is returned too
    g = grid.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda gg: grid_resample(x.detach(), gg), (g,))


def test_double_backward_through_the_pipe() -> None:
    x = images(4).requires_grad_(True)
    pipe = AugmentPipe(AugmentSpec(lumaflip=1.0), p=1.0)
    out = pipe(x, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    g.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_r1_with_ada_on_gives_finite_discriminator_gradients() -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(resolution=16, channel_base=256, channel_max=16, z_dim=8, w_dim=8,
                        mapping_layers=1, d_mapping_layers=1)
    _, D = build_networks(cfg)
    pipe = AugmentPipe(AugmentSpec(lumaflip=1.0), p=1.0)
    real = images(4).requires_grad_(True)
    c = (torch.rand(4, 14) < 0.3).float()
    logits = D(pipe(real, generator=torch.Generator().manual_seed(0)), c)
    penalty = r1_penalty(logits, real, gamma=1.0)
    assert penalty.ndim == 0 and torch.isfinite(penalty) and penalty > 0
    (penalty * 16).backward()
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert len(grads) > 10 and all(torch.isfinite(gr).all() for gr in grads)
    assert D.blocks["b16"].conv0.weight.grad.abs().sum() > 0


def test_controller_moves_p_toward_the_target() -> None:
    pipe = AugmentPipe(p=0.0)
    ada = AdaController(pipe, batch_size=8, interval=4, ada_kimg=0.1, target=0.6)
    step = 8 * 4 / 100
    for i in range(8):
        ada.observe(torch.ones(8))  # D sure every real is real: overfitting, raise p
        assert ada.step() == (i % 4 == 3)
    assert ada.last_rt == 1.0
    assert pipe.p.item() == pytest.approx(2 * step)
    for _ in range(4 * 10):
        ada.observe(-torch.ones(8))
        ada.step()
    assert pipe.p.item() == 0.0  # falls and is clamped at 0
    for _ in range(4 * 40):
        ada.observe(torch.ones(8))
        ada.step()
    assert pipe.p.item() == 1.0  # rises and is clamped at 1


def test_controller_state_resumes_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, generator=gen) + 0.5 for _ in range(30)]

    def run(chunks: list[torch.Tensor], pipe: AugmentPipe, ada: AdaController) -> None:
        for lg in chunks:
            ada.observe(lg)
            ada.step()

    pipe_a = AugmentPipe(p=0.2)
    ada_a = AdaController(pipe_a, batch_size=8, ada_kimg=0.2)
    run(logits, pipe_a, ada_a)
    pipe_b = AugmentPipe(p=0.2)
    ada_b = AdaController(pipe_b, batch_size=8, ada_kimg=0.2)
    run(logits[:13], pipe_b, ada_b)
    state, p_state = ada_b.state_dict(), pipe_b.state_dict()
    pipe_c = AugmentPipe()
    pipe_c.load_state_dict(p_state)
    ada_c = AdaController(pipe_c, batch_size=8, ada_kimg=0.2)
    ada_c.load_state_dict(state)
    run(logits[13:], pipe_c, ada_c)
    assert pipe_c.p.item() == pipe_a.p.item() and ada_c.state_dict() == ada_a.state_dict()
    assert pipe_a.p.item() != 0.2


def test_spec_validation_and_round_trip() -> None:
    spec = AugmentSpec(lumaflip=1.0, scale_std=0.1)
    assert AugmentSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UserError):
        AugmentSpec(xflip=-1.0)
    with pytest.raises(UserError):
        AugmentSpec.from_dict({"hue": 1.0})
    with pytest.raises(UserError):
        AdaController(AugmentPipe(), batch_size=0)


def test_rotation_keeps_the_image_statistics() -> None:
    # a constant image stays constant under any geometric transform (reflection padding)
    x = torch.full((8, 1, 16, 16), 0.25)
    out = AugmentPipe(only(rotate=1.0, scale=1.0, aniso=1.0, xfrac=1.0), p=1.0)(x)
    torch.testing.assert_close(out, x)
    assert math.isclose(AugmentPipe(p=0.5).p.item(), 0.5)
