"""The StyleGAN2 generator, discriminator and their layers (tiny configurations)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from plumbing.errors import UserError
from synth.discriminator import minibatch_stddev
from synth.generator import SynthesisNetwork
from synth.layers import EqualConv2d, EqualLinear, downsample2d, fade_images, modulated_conv2d, upsample2d
from synth.network_config import RESOLUTIONS, NetworkConfig
from synth.networks import build_networks

TINY = {"channel_base": 512, "channel_max": 32, "z_dim": 16, "w_dim": 16, "mapping_layers": 2, "d_mapping_layers": 1}


def tiny(resolution: int = 32, **kw: object) -> NetworkConfig:
    return NetworkConfig(resolution=resolution, **{**TINY, **kw})  # type: ignore[arg-type]


def conditions(batch: int, c_dim: int = 14, seed: int = 0) -> torch.Tensor:
    return (torch.rand(batch, c_dim, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


@pytest.fixture(scope="module")
def nets32() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_networks(tiny(32))


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_shapes_at_every_resolution(resolution: int) -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(resolution=resolution, channel_base=1024, channel_max=16, z_dim=8, w_dim=8,
                        mapping_layers=1, d_mapping_layers=1)
    G, D = build_networks(cfg)
    batch = 1 if resolution == 512 else 2
    with torch.no_grad():
        img = G(torch.randn(batch, 8), conditions(batch))
        logits = D(img, conditions(batch))
    assert img.shape == (batch, 1, resolution, resolution) and img.dtype == torch.float32
    assert logits.shape == (batch,) and torch.isfinite(logits).all()
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2


@pytest.mark.parametrize("bad", [24, 8, 1024, 100])
def test_bad_resolution_is_refused(bad: int) -> None:
    with pytest.raises(UserError):
        NetworkConfig(resolution=bad)


def test_config_round_trip_and_weights_only_checkpoint(nets32) -> None:
    G, D = nets32
    cfg = tiny(32)
    data = cfg.to_dict()
    assert all(isinstance(v, (int, float, type(None))) for v in data.values())
    assert NetworkConfig.from_dict(data) == cfg
    with pytest.raises(UserError):
        NetworkConfig.from_dict({**data, "bogus": 1})
    buf = io.BytesIO()
    torch.save({"config": data, "G": G.state_dict(), "D": D.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    G2, D2 = build_networks(NetworkConfig.from_dict(ckpt["config"]))
    G2.load_state_dict(ckpt["G"])
    D2.load_state_dict(ckpt["D"])
    assert "synthesis.blocks.b8.conv0.noise.noise_const" in ckpt["G"]
    assert "mapping.w_avg" in ckpt["G"]
    assert NetworkConfig.preset("tiny", resolution=64).channel_max == 64


def test_conditions_change_the_image(nets32) -> None:
    G, _ = nets32
    G.eval()
    z = torch.randn(1, 16).repeat(2, 1)
    c = torch.zeros(2, 14)
    c[1, 2] = 1.0
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
    assert (img[0] - img[1]).abs().mean() > 1e-3
    with torch.no_grad():
        again = G(z, c, noise_mode="const")
    torch.testing.assert_close(img, again)


def test_unconditional_networks() -> None:
    torch.manual_seed(0)
    G, D = build_networks(tiny(16, c_dim=0))
    img = G(torch.randn(3, 16), None)
    assert img.shape == (3, 1, 16, 16) and D(img, None).shape == (3,)
    assert G.mean_w(None, n=8).shape == (1, 16)


def test_equalised_lr_effective_weight_scale() -> None:
    torch.manual_seed(0)
    fc = EqualLinear(400, 300, lr_mul=0.01)
    assert fc.weight.std().item() == pytest.approx(100.0, rel=0.02)  # stored N(0,1)/lr_mul
    assert fc.effective_weight().std().item() == pytest.approx(1 / math.sqrt(400), rel=0.02)
    conv = EqualConv2d(64, 128, 3, gain=2.0)
    assert conv.effective_weight().std().item() == pytest.approx(2 / math.sqrt(64 * 9), rel=0.03)
    fc_b = EqualLinear(8, 4, lr_mul=0.01, bias_init=1.0)
    x = torch.zeros(1, 8)
    torch.testing.assert_close(fc_b(x), torch.ones(1, 4))  # effective bias = bias_init


def test_modulated_conv_paths_agree_and_upsampling_matches() -> None:
    torch.manual_seed(0)
    x, w, s = torch.randn(3, 4, 8, 8), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    for up in (1, 2):
        fused = modulated_conv2d(x, w, s, up=up, fused=True)
        unfused = modulated_conv2d(x, w, s, up=up, fused=False)
        torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
    # the transposed-convolution upsampling equals convolving the FIR-upsampled input (away from the border)
    ref = modulated_conv2d(upsample2d(x), w, s, up=1)
    torch.testing.assert_close(fused[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)
    # demodulation: unit-norm per-sample weights give unit-variance outputs on white input
    big = modulated_conv2d(torch.randn(2, 64, 32, 32), torch.randn(32, 64, 3, 3), torch.rand(2, 64) + 0.5)
    assert big.std().item() == pytest.approx(1.0, rel=0.1)
    ones = torch.ones(1, 1, 8, 8)
    torch.testing.assert_close(upsample2d(ones)[..., 1:-1, 1:-1], torch.ones(1, 1, 14, 14))
    torch.testing.assert_close(downsample2d(ones)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


def test_train_and_eval_modes_give_the_same_image(nets32) -> None:
    G, _ = nets32
    z, c = torch.randn(2, 16), conditions(2)
    with torch.no_grad():
        a = G(z, c, noise_mode="const", fused_modconv=True, update_w_avg=False)
        b = G(z, c, noise_mode="const", fused_modconv=False, update_w_avg=False)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_noise_modes(nets32) -> None:
    G, _ = nets32
    for block in G.synthesis.blocks.values():  # give noise a visible strength
        for layer in (block.conv0, block.conv1):
            if layer is not None:
                layer.noise.strength.data.fill_(0.5)
    z, c = torch.randn(1, 16), conditions(1)
    with torch.no_grad():
        r1, r2 = (G(z, c, noise_mode="random", update_w_avg=False) for _ in range(2))
        c1, c2 = (G(z, c, noise_mode="const", update_w_avg=False) for _ in range(2))
        n = G(z, c, noise_mode="none", update_w_avg=False)
    assert (r1 - r2).abs().max() > 1e-3
    torch.testing.assert_close(c1, c2)
    assert (c1 - n).abs().max() > 1e-3
    for block in G.synthesis.blocks.values():
        for layer in (block.conv0, block.conv1):
            if layer is not None:
                layer.noise.strength.data.zero_()
    with pytest.raises(ValueError):
        G(z, c, noise_mode="loud")


def test_truncation_psi_zero_gives_the_average_image(nets32) -> None:
    G, _ = nets32
    G.eval()
    G.mapping.w_avg.copy_(torch.randn(16))
    c = conditions(3)
    with torch.no_grad():
        a = G(torch.randn(3, 16), c, psi=0.0, noise_mode="const")
        b = G(torch.randn(3, 16), c, psi=0.0, noise_mode="const")
        avg = G.synthesis(G.w_avg.reshape(1, 1, -1).expand(3, G.num_ws, -1), noise_mode="const")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, avg, atol=1e-5, rtol=1e-5)
    # per-condition average: psi = 0 gives each condition's own mean-w image
    gen = torch.Generator().manual_seed(1)
    c2 = torch.zeros(2, 14)
    c2[1, 5] = 1.0
    means = G.mean_w(c2, n=64, generator=gen)
    assert means.shape == (2, 16) and (means[0] - means[1]).abs().max() > 1e-4
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2 * 64, 16, generator=gen)
    manual = G.mapping(z, c2.repeat_interleave(64, dim=0)).reshape(2, 64, 16).mean(dim=1)
    torch.testing.assert_close(means, manual, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        img = G(torch.randn(2, 16), c2, psi=0.0, w_avg=means, noise_mode="const")
        ref = G.synthesis(means.unsqueeze(1).expand(2, G.num_ws, 16), noise_mode="const")
    torch.testing.assert_close(img, ref, atol=1e-5, rtol=1e-5)
    # truncation_cutoff leaves the later ws alone
    ws = G.compute_ws(torch.randn(2, 16), c2, psi=0.0, truncation_cutoff=3)
    torch.testing.assert_close(ws[:, :3], G.w_avg.expand(2, 3, 16))
    assert (ws[:, 3:] - G.w_avg).abs().max() > 1e-3


def test_w_avg_tracks_in_training_only(nets32) -> None:
    G, _ = nets32
    G.mapping.w_avg.zero_()
    G.eval()
    G.compute_ws(torch.randn(4, 16), conditions(4))
    assert G.w_avg.abs().max() == 0
    G.train()
    ws = G.compute_ws(torch.randn(4, 16), conditions(4))
    torch.testing.assert_close(G.w_avg, (1 - 0.995) * ws[:, 0].detach().mean(0))
    G.eval()


def test_style_mixing(nets32) -> None:
    G, _ = nets32
    z, c = torch.randn(64, 16), conditions(64)
    plain = G.compute_ws(z, c, update_w_avg=False)
    assert torch.equal(plain, plain[:, :1].expand_as(plain))
    mixed = G.compute_ws(z, c, mixing_prob=1.0, update_w_avg=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mixed[:, 0], plain[:, 0])
    changed = (mixed != plain).any(dim=2)  # [B, num_ws]
    assert changed[:, -1].all()  # every sample crossed over before the last layer
    cross = changed.float().argmax(dim=1)
    assert cross.min() >= 1 and len(set(cross.tolist())) > 1
    assert torch.equal(changed, torch.arange(G.num_ws) >= cross.unsqueeze(1))
    low = G.compute_ws(z, c, mixing_prob=1.0, resolution=8, update_w_avg=False)
    assert low.shape == (64, SynthesisNetwork.num_ws_for(8), 16)


def test_progressive_generator_fade(nets32) -> None:
    G, _ = nets32
    G.eval()
    z, c = torch.randn(2, 16), conditions(2)
    with torch.no_grad():
        for res in (8, 16, 32):
            lower = G(z, c, resolution=res // 2, noise_mode="const")
            faded0 = G(z, c, resolution=res, alpha=0.0, noise_mode="const")
            full = G(z, c, resolution=res, noise_mode="const")
            one = G(z, c, resolution=res, alpha=1.0, noise_mode="const")
            half = G(z, c, resolution=res, alpha=0.5, noise_mode="const")
            assert faded0.shape == (2, 1, res, res)
            torch.testing.assert_close(faded0, upsample2d(lower), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(one, full)
            torch.testing.assert_close(half, torch.lerp(faded0, full, 0.5), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(G(z, c, noise_mode="const"), G(z, c, resolution=32, noise_mode="const"))
    with pytest.raises(ValueError):
        G(z, c, resolution=64)
    with pytest.raises(ValueError):
        G(z, c, resolution=16, alpha=1.5)


def test_progressive_discriminator_fade(nets32) -> None:
    _, D = nets32
    D.eval()
    c = conditions(4)
    with torch.no_grad():
        for res in (8, 16, 32):
            img = torch.randn(4, 1, res, res)
            torch.testing.assert_close(D(img, c, alpha=0.0), D(downsample2d(img), c), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(D(img, c, alpha=1.0), D(img, c))
            mid = D(img, c, alpha=0.5)
            assert mid.shape == (4,) and torch.isfinite(mid).all()
        assert D(torch.randn(4, 1, 4, 4), c).shape == (4,)
    with pytest.raises(ValueError):
        D(torch.randn(4, 1, 64, 64), c)
    real = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(fade_images(real, 0.0), upsample2d(downsample2d(real)))
    assert fade_images(real, 1.0) is real


def test_discriminator_conditioning_and_gradients(nets32) -> None:
    G, D = nets32
    D.train()
    img = torch.randn(1, 1, 32, 32).repeat(2, 1, 1, 1)
    c = torch.zeros(2, 14)
    c[1, 0] = 1.0
    logits = D(img, c)
    assert (logits[0] - logits[1]).abs() > 1e-5
    # the all-zero condition (no findings) still gives image-dependent logits
    zero = D(torch.randn(2, 1, 32, 32), torch.zeros(2, 14))
    assert zero.abs().min() > 1e-6 and (zero[0] - zero[1]).abs() > 1e-6
    (logits.sum() + G(torch.randn(2, 16), c).square().mean()).backward()
    for name, p in list(D.named_parameters()) + list(G.named_parameters()):
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    assert D.blocks["b32"].conv0.weight.grad is not None
    assert G.synthesis.blocks["b32"].conv1.weight.grad is not None
    D.zero_grad(set_to_none=True)
    G.zero_grad(set_to_none=True)


def test_minibatch_stddev_groups() -> None:
    x = torch.randn(6, 4, 4, 4)
    y = minibatch_stddev(x, group_size=4)  # 6 is not divisible by 4: groups of 3
    assert y.shape == (6, 5, 4, 4)
    groups = x.reshape(3, 2, 4, 4, 4)
    expected = (groups.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    torch.testing.assert_close(y[:2, 4, 0, 0], expected)
    torch.testing.assert_close(y[2:4, 4, 0, 0], expected)
    assert minibatch_stddev(torch.randn(1, 4, 4, 4), 4)[:, 4].abs().max() < 1e-3  # batch of one


def test_channels_last_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    G, D = build_networks(tiny(16))
    z, c = torch.randn(2, 16), conditions(2)
    img = G(z, c, noise_mode="const", update_w_avg=False)
    logits = D(img, c)
    G.to(memory_format=torch.channels_last)
    D.to(memory_format=torch.channels_last)
    img_cl = G(z, c, noise_mode="const", update_w_avg=False)
    torch.testing.assert_close(img_cl, img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D(img.contiguous(memory_format=torch.channels_last), c), logits, atol=1e-5, rtol=1e-5)


def test_autocast_bfloat16_on_cpu() -> None:
    torch.manual_seed(0)
    G, D = build_networks(tiny(16))
    z, c = torch.randn(2, 16), conditions(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z, c)
        logits = D(img, c)
    assert img.dtype == torch.float32 and logits.dtype == torch.float32
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)


def test_auxiliary_classifier_shares_the_head_and_leaves_the_rest_unchanged() -> None:
    torch.manual_seed(0)
    _, D = build_networks(tiny(16))
    torch.manual_seed(0)
    _, D_ac = build_networks(tiny(16), classifier=True)
    plain, with_aux = D.state_dict(), D_ac.state_dict()
    assert sorted(set(with_aux) - set(plain)) == ["b4.aux.bias", "b4.aux.weight"]
    assert all(torch.equal(plain[k], with_aux[k]) for k in plain)  # built last: the same initial values
    img, c = torch.randn(4, 1, 16, 16), conditions(4)
    logits, classes = D_ac.with_classes(img, c, alpha=0.5)
    assert classes.shape == (4, 14) and classes.dtype == torch.float32
    torch.testing.assert_close(logits, D_ac(img, c, alpha=0.5))
    torch.testing.assert_close(logits, D(img, c, alpha=0.5))
    classes.sum().backward()
    assert D_ac.b4.aux.weight.grad is not None and D_ac.blocks["b16"].conv0.weight.grad is not None
    assert D_ac.b4.out.weight.grad is None  # the class logits skip the projection output
    with pytest.raises(ValueError, match="no auxiliary classifier"):
        D.with_classes(img, c)
    with pytest.raises(ValueError, match="needs conditions"):
        build_networks(tiny(16, c_dim=0), classifier=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, classes = D_ac.with_classes(img, c)
    assert logits.dtype == classes.dtype == torch.float32
