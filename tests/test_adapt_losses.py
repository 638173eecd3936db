"""The DCAN loss terms (adapt.losses) and the presets that switch them (adapt.config)."""

from __future__ import annotations

import math

import pytest
import torch

from adapt.config import ALIGNMENTS, AdaptConfig, with_preset
from adapt.losses import (
    OUTPUT_BANDWIDTH,
    correction_regulariser,
    gaussian_kernels,
    mk_mmd,
    prediction_diversity,
    prior_diversity,
    target_entropy,
    total_loss,
    weighted_mk_mmd,
)
from adapt.selection import collapsed_class, prediction_spread, select


def _kernel(a: torch.Tensor, b: torch.Tensor, sigmas: list[float]) -> float:
    d2 = float(((a - b) ** 2).sum())
    return sum(math.exp(-d2 / s) for s in sigmas)


def _sigmas(joint: torch.Tensor, kernels: int, multiplier: float) -> list[float]:
    n = len(joint)
    total = sum(float(((joint[i] - joint[j]) ** 2).sum()) for i in range(n) for j in range(n) if i != j)
    base = total / (n * n - n) / multiplier ** (kernels // 2)
    return [base * multiplier**q for q in range(kernels)]


def test_mmd_matches_a_direct_computation_over_all_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64) + 1
    sig = _sigmas(torch.cat([s, t]), 5, 2.0)  # the bandwidth from every pair of the joint sample
    linear = sum(
        _kernel(s[i], s[(i + 1) % 6], sig) + _kernel(t[i], t[(i + 1) % 6], sig)
        - _kernel(s[i], t[(i + 1) % 6], sig) - _kernel(s[(i + 1) % 6], t[i], sig)
        for i in range(6)
    ) / 6
    assert float(mk_mmd(s, t)) == pytest.approx(linear, rel=1e-5)
    joint = torch.cat([s, t])
    k = gaussian_kernels(joint)
    direct = torch.tensor([[_kernel(a, b, sig) for b in joint] for a in joint], dtype=torch.float64)
    torch.testing.assert_close(k.double(), direct, rtol=1e-5, atol=1e-6)
    fixed = gaussian_kernels(joint, kernels=1, bandwidth=OUTPUT_BANDWIDTH)
    assert float(fixed[0, 7]) == pytest.approx(_kernel(s[0], t[1], [OUTPUT_BANDWIDTH]), rel=1e-5)


def test_weighted_mmd_is_the_plain_one_for_equal_weights_and_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64) + 1
    assert float(weighted_mk_mmd(s, t, torch.ones(6))) == float(mk_mmd(s, t))  # exactly
    assert float(weighted_mk_mmd(s, t, torch.full((6,), 3.0))) == pytest.approx(float(mk_mmd(s, t)), rel=1e-6)
    assert float(weighted_mk_mmd(s, t, torch.zeros(6))) == float(mk_mmd(s, t))  # no weight: the plain estimator
    w = torch.tensor([2.0, 0.5, 1.0, 0.0, 1.5, 1.0])
    v = [float(x) / (float(w.sum()) / 6) for x in w]  # weights over their mean
    sig = _sigmas(torch.cat([s[:6], t[:6]]), 5, 2.0)  # the bandwidth from every pair of the (unweighted) joint sample
    direct = 0.0
    for i in range(6):
        j = (i + 1) % 6
        direct += (v[i] * v[j] * _kernel(s[i], s[j], sig) + _kernel(t[i], t[j], sig)
                   - v[i] * _kernel(s[i], t[j], sig) - v[j] * _kernel(s[j], t[i], sig))
    assert float(weighted_mk_mmd(s, t, w)) == pytest.approx(direct / 6, rel=1e-5)
    fixed = float(weighted_mk_mmd(s, t, w, kernels=1, bandwidth=OUTPUT_BANDWIDTH))
    b = [OUTPUT_BANDWIDTH]
    one = sum(v[i] * v[(i + 1) % 6] * _kernel(s[i], s[(i + 1) % 6], b) + _kernel(t[i], t[(i + 1) % 6], b)
              - v[i] * _kernel(s[i], t[(i + 1) % 6], b) - v[(i + 1) % 6] * _kernel(s[(i + 1) % 6], t[i], b)
              for i in range(6)) / 6
    assert fixed == pytest.approx(one, rel=1e-5)


def test_weighting_the_source_to_the_target_prior_removes_a_label_shift_from_the_mmd() -> None:
    g = torch.Generator().manual_seed(6)
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    source_labels = torch.randperm(2000, generator=g) % 2  # class-balanced source, shuffled
    target_labels = (torch.rand(2000, generator=g) < 0.1).long()  # 10% of class 1
    source = means[source_labels] + torch.randn(2000, 2, generator=g)
    target = means[target_labels] + torch.randn(2000, 2, generator=g)
    weights = torch.tensor([0.9 / 0.5, 0.1 / 0.5])[source_labels]  # w_y = q(y) / p_s(y)
    plain, weighted = float(mk_mmd(source, target)), float(weighted_mk_mmd(source, target, weights))
    assert abs(weighted) < 0.25 * plain, (plain, weighted)


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_shifted_ones() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    shifted = torch.randn(400, 8, generator=g) + 1.5
    same, apart = float(mk_mmd(a, b)), float(mk_mmd(a, shifted))
    assert abs(same) < 0.1 and apart > 0.5, (same, apart)


def test_mmd_has_gradients_and_cuts_the_longer_sample() -> None:
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(4, 4) + 1
    mk_mmd(s, t).backward()
    assert s.grad is not None and torch.all(s.grad[4] == 0) and s.grad[:4].abs().sum() > 0


def test_entropy_and_diversity_closed_forms() -> None:
    uniform = torch.zeros(4, 3)
    assert float(target_entropy(uniform)) == pytest.approx(math.log(3))
    assert float(prediction_diversity(uniform)) == pytest.approx(math.log(3))
    one_hot = torch.tensor([[50.0, 0, 0]] * 4)
    assert float(target_entropy(one_hot)) == pytest.approx(0.0, abs=1e-6)
    assert float(prediction_diversity(one_hot)) == pytest.approx(0.0, abs=1e-6)
    # confident but spread predictions: zero entropy, maximal diversity
    spread = torch.tensor([[50.0, 0, 0], [0, 50.0, 0], [0, 0, 50.0]])
    assert float(prediction_diversity(spread)) == pytest.approx(math.log(3), abs=1e-6)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        assert float(prediction_diversity(torch.randn(6, 3, generator=g) * 3)) <= math.log(3) + 1e-6


def test_diversity_towards_a_prior_closed_forms() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 4, generator=g) * 2
    uniform = torch.full((4,), 0.25)
    assert float(prior_diversity(logits, uniform)) == pytest.approx(float(prediction_diversity(logits)) - math.log(4),
                                                                    abs=1e-6)  # D_u = D - log C
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    pbar = torch.softmax(logits, dim=1).mean(dim=0)
    kl = sum(float(pbar[c]) * math.log(float(pbar[c]) / float(q[c])) for c in range(4))
    assert float(prior_diversity(logits, q)) == pytest.approx(-kl, abs=1e-6)
    at_prior = torch.log(q)[None, :].repeat(3, 1)  # every prediction is q: pbar = q, D_q = 0 (its maximum)
    assert float(prior_diversity(at_prior, q)) == pytest.approx(0.0, abs=1e-6)
    assert float(prior_diversity(logits, q)) < 0


def test_regulariser_is_zero_without_correction_and_positive_with_one() -> None:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(12, 5, generator=g)
    logits = torch.randn(12, 2, generator=g)
    labels = torch.tensor([0, 1] * 6)
    zero = correction_regulariser(features, features, logits, logits, labels, 2, torch.Generator().manual_seed(0))
    moved = correction_regulariser(features, features + 3, logits, logits + torch.tensor([4.0, -4.0]), labels, 2,
                                   torch.Generator().manual_seed(0))
    assert float(moved) > 0.5 and float(moved) > float(zero)
    alone = correction_regulariser(features[:1], features[:1], logits[:1], logits[:1], labels[:1], 2)
    assert float(alone) == pytest.approx(0.0, abs=1e-6)  # one image of a class, left where it was
    moved_alone = correction_regulariser(features[:1], features[:1] + 3, logits[:1], logits[:1], labels[:1], 2)
    assert float(moved_alone) > 0.1


def test_total_loss_weighs_each_term() -> None:
    values = dict(cross_entropy=1.0, feature_mmd=2.0, output_mmd=3.0, regulariser=4.0, entropy=5.0, diversity=6.0)
    terms = {k: torch.tensor(v) for k, v in values.items()}
    weights = {"feature_mmd": 1.0, "output_mmd": 0.5, "regulariser": 0.25, "entropy": 0.1, "diversity": 0.2}
    expected = 1 + 1.5 * (2 + 0.5 * 3 + 0.25 * 4) + 0.1 * 5 - 0.2 * 6
    assert float(total_loss(terms, weights, alpha=1.5)) == pytest.approx(expected)


def test_each_preset_switches_on_exactly_its_terms() -> None:
    on = {}
    for alignment in ALIGNMENTS:
        cfg = with_preset(AdaptConfig(), alignment)
        on[alignment] = {k for k, v in cfg.weights().items() if v}
        assert cfg.domain_attention == cfg.correction == (alignment != "none")
    assert on == {
        "none": set(),
        "dcan": {"feature_mmd", "output_mmd", "regulariser", "entropy"},
        "ours": {"feature_mmd", "output_mmd", "entropy"},
    }
    assert with_preset(AdaptConfig(), "dcan").entropy == 0.1 and with_preset(AdaptConfig(), "dcan").alpha == 1.5
    assert not with_preset(AdaptConfig(), "none").uses_target
    diverse = with_preset(AdaptConfig(diversity=1.0), "ours")
    assert diverse.label == "ours+div1" and diverse.weights()["diversity"] == 1.0


def test_collapse_detection_and_label_free_selection() -> None:
    assert collapsed_class({"No Finding": 96, "Pneumothorax": 4}) == "No Finding"
    assert collapsed_class({"No Finding": 95, "Pneumothorax": 5}) is None
    assert collapsed_class({"a": 0, "b": 0}) is None
    keys = ("step", "balanced_accuracy", "source_validation_balanced_accuracy", "information_maximisation")
    rows = [(1, 0.9, 0.5, 0.1), (2, 0.6, 0.8, 0.3), (3, 0.7, 0.8, 0.2)]
    history = [dict(zip(keys, row, strict=True)) for row in rows]
    chosen = select(history)
    assert {k: v["step"] for k, v in chosen.items()} == {
        "final": 3, "source_validation": 3, "information_maximisation": 2, "oracle": 1,
    }


def test_prediction_spread_closed_form() -> None:
    uniform = prediction_spread(torch.full((4, 3), 1 / 3))
    assert uniform["entropy"] == pytest.approx(math.log(3)) and uniform["diversity"] == pytest.approx(math.log(3))
    assert uniform["score"] == pytest.approx(0.0, abs=1e-12)
    confident = prediction_spread(torch.eye(3)[[0, 1, 2, 0, 1, 2]])  # one-hot, spread evenly: the best score
    assert confident == pytest.approx({"entropy": 0.0, "diversity": math.log(3), "score": math.log(3)})
    collapsed = prediction_spread(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert collapsed == pytest.approx({"entropy": 0.0, "diversity": 0.0, "score": 0.0})
