"""GAN losses, the two objectives, R1, path-length regularisation and the EMA decay on known inputs."""

from __future__ import annotations

import math

import pytest
import torch

from synth.losses import (
    ac_loss,
    d_logistic_loss,
    discriminator_objective,
    ema_beta,
    g_nonsaturating_loss,
    generator_objective,
    path_length_penalty,
    r1_penalty,
)
from synth.network_config import NetworkConfig
from synth.networks import build_networks


def softplus(t: float) -> float:
    return math.log1p(math.exp(t))


def test_generator_loss_values() -> None:
    assert g_nonsaturating_loss(torch.zeros(4)).item() == pytest.approx(math.log(2))
    logits = torch.tensor([2.0, -1.0])
    assert g_nonsaturating_loss(logits).item() == pytest.approx((softplus(-2.0) + softplus(1.0)) / 2)
    assert g_nonsaturating_loss(torch.tensor([1.0], dtype=torch.bfloat16)).dtype == torch.float32


def test_discriminator_loss_values() -> None:
    real, fake = torch.tensor([3.0, 0.0]), torch.tensor([-2.0, 1.0])
    expected = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(-3.0) + softplus(0.0)) / 2
    assert d_logistic_loss(real, fake).item() == pytest.approx(expected)
    assert d_logistic_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(2 * math.log(2))


def test_auxiliary_classifier_loss_values() -> None:
    assert ac_loss(torch.zeros(3, 5), (torch.rand(3, 5) < 0.5).float()).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # BCE(sigmoid(a), 1) = softplus(-a), BCE(sigmoid(a), 0) = softplus(a)
    expected = (softplus(-2.0) + softplus(-1.0) + math.log(2) + softplus(-3.0)) / 4
    assert ac_loss(logits, targets).item() == pytest.approx(expected)
    assert ac_loss(logits.to(torch.bfloat16), targets).dtype == torch.float32
    with pytest.raises(ValueError, match="differ"):
        ac_loss(logits, targets[:, :1])


def test_r1_of_a_linear_discriminator() -> None:
    # D(x) = sum(w * x): grad_x D = w, so R1 = gamma/2 * ||w||^2
    w = torch.randn(1, 1, 4, 4)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3))
    assert r1_penalty(logits, x, gamma=2.0).item() == pytest.approx(w.square().sum().item(), rel=1e-5)
    # D(x) = sum(x^2)/2 per sample: grad = x, R1 = gamma/2 * mean_b ||x_b||^2, and it back-propagates
    scale = torch.tensor(1.5, requires_grad=True)
    logits = 0.5 * scale * x.square().sum(dim=(1, 2, 3))
    penalty = r1_penalty(logits, x, gamma=1.0)
    expected = 0.5 * 1.5**2 * x.detach().square().sum(dim=(1, 2, 3)).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    penalty.backward()
    assert scale.grad.item() == pytest.approx((2 * expected / 1.5).item(), rel=1e-5)


def test_path_length_of_a_linear_generator() -> None:
    # img = A ws: grads = A^T y, so lengths follow from the same noise draw
    batch, n, d, size = 4, 3, 5, 4
    ws = torch.randn(batch, n, d, requires_grad=True)
    a = torch.randn(n * d, size * size, requires_grad=True)  # a "generator weight"
    img = (ws.reshape(batch, -1) @ a).reshape(batch, 1, size, size)
    pl_mean = torch.tensor(0.5)
    out = path_length_penalty(img, ws, pl_mean, decay=0.1, generator=torch.Generator().manual_seed(0))
    y = torch.randn(img.shape, generator=torch.Generator().manual_seed(0)) / size
    grads = (y.reshape(batch, -1) @ a.detach().t()).reshape(batch, n, d)
    lengths = grads.square().sum(2).mean(1).sqrt()
    new_mean = 0.5 + 0.1 * (lengths.mean() - 0.5)
    torch.testing.assert_close(out.lengths, lengths)
    torch.testing.assert_close(out.pl_mean, new_mean)
    torch.testing.assert_close(out.penalty, (lengths - new_mean).square().mean())
    assert not out.pl_mean.requires_grad and out.penalty.requires_grad


def test_path_length_backpropagates_into_the_generator() -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(resolution=16, channel_base=256, channel_max=16, z_dim=8, w_dim=8,
                        mapping_layers=1, d_mapping_layers=1)
    G, _ = build_networks(cfg)
    c = (torch.rand(2, 14) < 0.3).float()
    ws = G.compute_ws(torch.randn(2, 8), c, mixing_prob=0.9)
    img = G.synthesis(ws)
    out = path_length_penalty(img, ws, torch.zeros([]))
    (out.penalty * 2.0 * 4).backward()
    grads = [p.grad for p in G.parameters() if p.grad is not None]
    assert torch.isfinite(out.penalty) and out.lengths.shape == (2,)
    assert len(grads) > 10 and all(torch.isfinite(g).all() for g in grads)
    assert G.synthesis.blocks["b16"].conv0.weight.grad.abs().sum() > 0


def test_ema_beta_formula() -> None:
    assert ema_beta(64, 20) == pytest.approx(0.5 ** (64 / 20000))
    assert ema_beta(32, 10, cur_nimg=1000, rampup=0.05) == pytest.approx(0.5 ** (32 / 50))
    assert ema_beta(32, 10, cur_nimg=10**7, rampup=0.05) == pytest.approx(0.5 ** (32 / 10000))
    with pytest.raises(ValueError):
        ema_beta(32, 10, rampup=0.05)


def test_generator_objective_is_the_nonsaturating_loss_plus_the_weighted_class_loss() -> None:
    logits = torch.tensor([2.0, -1.0])
    plain = (softplus(-2.0) + softplus(1.0)) / 2
    assert generator_objective(logits, torch.tensor(0.7), 0.0).item() == pytest.approx(plain)
    assert generator_objective(logits, torch.tensor(0.7), 0.5).item() == pytest.approx(plain + 0.35)


def test_discriminator_objective_adds_the_class_loss_and_the_lazy_r1_term() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    logistic = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(-3.0)) / 2
    ac_real = torch.tensor(0.4)
    assert discriminator_objective(real, fake, ac_real, 0.0).item() == pytest.approx(logistic)
    assert discriminator_objective(real, fake, ac_real, 2.0).item() == pytest.approx(logistic + 0.8)
    lazy = torch.tensor(0.25) * 16
    assert discriminator_objective(real, fake, ac_real, 2.0, lazy).item() == pytest.approx(logistic + 0.8 + 4.0)
    # zero logits: log 2 from each of the two softplus means
    zeros = discriminator_objective(torch.zeros(3), torch.zeros(3), torch.zeros(()), 1.0)
    assert zeros.item() == pytest.approx(2 * math.log(2))
