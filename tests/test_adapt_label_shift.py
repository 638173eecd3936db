"""Label shift (adapt.label_shift): prior estimates, temperature, weights, simulated shifts and a run using them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from adapt import data as adapt_data_module
from adapt.config import AdaptConfig, with_preset
from adapt.label_shift import (
    RELIABLE_CONDITIONING,
    TEMPERATURE_RANGE,
    bbse_prior,
    class_shares,
    class_weights,
    confusion_conditioning,
    em_prior,
    estimate_priors,
    fit_temperature,
    floored_prior,
    joint_confusion,
    parse_target_prior,
    resample_to_prior,
)
from adapt.losses import total_loss
from adapt.model import build_model
from adapt.trainer import DcanTrainer
from plumbing.errors import UserError
from plumbing.seeding import numpy_rng
from tests.test_adapt_train import PHANTOMS, _error, _results, _train

CONFUSION = torch.tensor([[0.8, 0.1, 0.2], [0.15, 0.7, 0.1], [0.05, 0.2, 0.7]], dtype=torch.float64)
"""``P(yhat = i | y = j)``: column ``j`` is the prediction distribution of class ``j``."""


def _simulate(prior: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from ``prior`` and predictions from :data:`CONFUSION`'s column of each label."""
    labels = torch.multinomial(prior, n, replacement=True, generator=g)
    predicted = torch.multinomial(CONFUSION.T[labels], 1, generator=g).squeeze(1)
    return labels, predicted


def test_joint_confusion_and_class_shares_closed_form() -> None:
    c = joint_confusion(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 3)
    torch.testing.assert_close(c, torch.tensor([[0.25, 0.25, 0], [0, 0.25, 0], [0, 0.25, 0]], dtype=torch.float64))
    assert class_shares(torch.tensor([2, 2, 0, 1]), 4).tolist() == [0.25, 0.25, 0.5, 0.0]
    assert class_shares(torch.zeros(0, dtype=torch.long), 2).tolist() == [0.0, 0.0]


def test_bbse_is_exact_on_population_figures_and_recovers_a_prior_from_samples() -> None:
    p_val, q = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64), torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    joint = CONFUSION * p_val[None, :]  # C[i, j] = P(yhat = i | y = j) p_val(j)
    torch.testing.assert_close(bbse_prior(joint, CONFUSION @ q), q)
    g = torch.Generator().manual_seed(0)
    labels, predicted = _simulate(p_val, 20000, g)
    _, target_predicted = _simulate(q, 20000, g)
    estimate = bbse_prior(joint_confusion(predicted, labels, 3), class_shares(target_predicted, 3))
    assert float(estimate.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(estimate, q, rtol=0, atol=0.03)  # sampling error ~0.01 at 20000 images


def test_bbse_failure_modes_give_a_prior() -> None:
    p_val = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)  # class 2 never in the validation set: C singular
    joint = CONFUSION * p_val[None, :]
    q = torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64)
    torch.testing.assert_close(bbse_prior(joint, CONFUSION @ q), q, rtol=0, atol=1e-9)
    nothing = bbse_prior(joint, torch.zeros(3, dtype=torch.float64))  # no evidence of a shift: p_val
    torch.testing.assert_close(nothing, p_val)
    empty = bbse_prior(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(empty, torch.full((3,), 1 / 3, dtype=torch.float64))
    clipped = bbse_prior(torch.eye(2, dtype=torch.float64) / 2, torch.tensor([1.2, -0.2], dtype=torch.float64))
    assert clipped.tolist() == [1.0, 0.0]  # a negative weight is clipped at 0


def _gaussian_posteriors(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Exact posteriors of unit-variance Gaussian classes with the given means under a uniform prior."""
    return torch.softmax(-0.5 * (x[:, None] - means[None, :]) ** 2, dim=1)


def test_em_recovers_a_prior_from_calibrated_probabilities() -> None:
    g = torch.Generator().manual_seed(1)
    means = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    labels = torch.multinomial(q, 20000, replacement=True, generator=g)
    x = means[labels] + torch.randn(20000, generator=g, dtype=torch.float64)
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    estimate = em_prior(_gaussian_posteriors(x, means), uniform)
    assert float(estimate.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(estimate, q, rtol=0, atol=0.02)
    one_hot = torch.eye(3, dtype=torch.float64)[[0, 0, 1, 2]]  # certain predictions: their shares, at once
    torch.testing.assert_close(em_prior(one_hot, uniform), torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    torch.testing.assert_close(em_prior(torch.zeros(0, 3, dtype=torch.float64), uniform), uniform)


def test_temperature_fit_recovers_a_known_temperature_and_stops_at_its_range() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 3
    labels = torch.multinomial(torch.softmax(logits / 2.0, dim=1), 1, generator=g).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    separable = torch.tensor([[2.0, -2.0], [-1.0, 1.0]])
    assert fit_temperature(separable, torch.tensor([0, 1])) == TEMPERATURE_RANGE[0]
    assert fit_temperature(separable, torch.tensor([1, 0])) == TEMPERATURE_RANGE[1]  # always wrong: flatter is better
    assert fit_temperature(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 1.0


def test_estimate_priors_uses_both_estimators_on_one_networks_logits() -> None:
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    q = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    val_labels = torch.multinomial(uniform, 20000, replacement=True, generator=g)
    target_labels = torch.multinomial(q, 20000, replacement=True, generator=g)
    logits = [-0.5 * (means[y][:, None] + torch.randn(len(y), 1, generator=g, dtype=torch.float64) - means) ** 2
              for y in (val_labels, target_labels)]
    estimates = estimate_priors(logits[0] * 3, val_labels, logits[1] * 3, uniform)  # overconfident by 3: T = 3
    assert estimates["temperature"] == pytest.approx(3.0, rel=0.05)
    for name in ("bbse", "em"):
        assert estimates[name] == pytest.approx(q.tolist(), abs=0.03), name


def test_class_weights_and_floored_prior_closed_forms() -> None:
    q = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    assert class_weights(q, uniform).tolist() == pytest.approx([2.0, 1.2, 0.8, 0.0])
    assert class_weights(q, torch.tensor([0.5, 0.5, 0.0, 0.0])).tolist() == pytest.approx([1.0, 0.6, 0.0, 0.0])
    floored = floored_prior(q, 0.1)
    assert floored.tolist() == pytest.approx([0.5 / 1.1, 0.3 / 1.1, 0.2 / 1.1, 0.1 / 1.1])


def test_target_prior_text_is_parsed_and_refused_in_one_line() -> None:
    assert parse_target_prior("natural", 4, 0) is None
    assert parse_target_prior("balanced", 4, 0).tolist() == [0.25] * 4
    assert parse_target_prior("0.5,0.3,0.1,0.1", 4, 0).tolist() == pytest.approx([0.5, 0.3, 0.1, 0.1])
    assert parse_target_prior("0.333,0.333,0.334,0", 4, 0).sum() == pytest.approx(1.0)
    drawn = parse_target_prior("dirichlet:0.5", 4, 0)
    assert drawn.sum() == pytest.approx(1.0) and (drawn >= 0).all()
    assert parse_target_prior("dirichlet:0.5", 4, 0).tolist() == drawn.tolist()  # seeded by the run seed
    assert parse_target_prior("dirichlet:0.5", 4, 1).tolist() != drawn.tolist()
    for text, says in (
        ("skewed", "must be one of natural | balanced | P1,P2,... | dirichlet:ALPHA"),
        ("0.5,0.5", "gives 2 shares; the task has 4 classes"),
        ("0.5,0.6,0,0", "the shares sum to 1.1, not 1"),
        ("-0.5,0.5,0.5,0.5", "every share must be a finite number >= 0"),
        ("nan,0.5,0.5,0", "every share must be a finite number >= 0"),
        ("dirichlet:0", "dirichlet:ALPHA needs a finite ALPHA > 0"),
        ("dirichlet:x", "dirichlet:ALPHA needs a finite ALPHA > 0"),
    ):
        with pytest.raises(UserError) as error:
            parse_target_prior(text, 4, 0)
        message = str(error.value)
        assert message.startswith(f"--target-prior {text!r}") and says in message and "\n" not in message, message


def test_resampling_takes_the_largest_subset_that_follows_the_prior() -> None:
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    rows = resample_to_prior(labels, np.array([0.5, 0.25, 0.25]), numpy_rng(0, "t"))
    assert np.bincount(labels[rows]).tolist() == [20, 10, 10]  # N = min(100/0.5, 50/0.25, 10/0.25) = 40
    assert len(np.unique(rows)) == len(rows) and (np.diff(rows) > 0).all()  # without replacement, sorted
    assert rows.tolist() == resample_to_prior(labels, np.array([0.5, 0.25, 0.25]), numpy_rng(0, "t")).tolist()
    assert rows.tolist() != resample_to_prior(labels, np.array([0.5, 0.25, 0.25]), numpy_rng(1, "t")).tolist()
    odd = resample_to_prior(np.repeat([0, 1, 2], [7, 100, 100]), np.array([0.2, 0.4, 0.4]), numpy_rng(0))
    assert np.bincount(np.repeat([0, 1, 2], [7, 100, 100])[odd]).tolist() == [7, 14, 14]
    third = resample_to_prior(labels, np.full(3, 1 / 3), numpy_rng(0))
    assert np.bincount(labels[third]).tolist() == [10, 10, 10]
    left_out = resample_to_prior(labels, np.array([0.0, 0.5, 0.5]), numpy_rng(0))
    assert np.bincount(labels[left_out], minlength=3).tolist() == [0, 10, 10]
    assert len(resample_to_prior(np.repeat([0, 1], [10, 10]), np.array([0.5, 0.25, 0.25]), numpy_rng(0))) == 0


def test_resampling_to_a_drawn_prior_hits_it_within_sampling_error() -> None:
    rng = np.random.default_rng(5)
    labels = rng.choice(4, size=20000, p=[0.9, 0.05, 0.03, 0.02])
    for seed in range(3):
        prior = parse_target_prior("dirichlet:1", 4, seed)
        rows = resample_to_prior(labels, prior, numpy_rng(seed, "target prior"))
        shares = np.bincount(labels[rows], minlength=4) / len(rows)
        assert np.abs(shares - prior).max() <= 1 / len(rows) + 1e-12  # only rounding to whole images
        assert len(rows) >= 0.9 * min(np.bincount(labels)[c] / prior[c] for c in range(4))


def _trainer(cfg: AdaptConfig) -> DcanTrainer:
    model, _ = build_model(cfg, 1, 4, Path("unused"))
    return DcanTrainer(model, cfg, torch.device("cpu"), amp=False)


def test_a_prior_correction_with_every_weight_one_is_the_uncorrected_loss() -> None:
    base = with_preset(AdaptConfig(backbone="resnet18", init="scratch", image_size=32, batch_size=8, diversity=0.5),
                       "ours")
    g = torch.Generator().manual_seed(4)
    source = {"image": torch.randn(8, 1, 32, 32, generator=g), "label": torch.tensor([0, 1, 2, 3] * 2)}
    target = {"image": torch.randn(8, 1, 32, 32, generator=g), "label": torch.full((8,), -1)}
    losses = {}
    for correction in ("none", "em"):
        trainer = _trainer(replace(base, prior_correction=correction))
        with torch.no_grad():
            terms = trainer.terms(source, target, step=1)  # before the first evaluation: q = p_s, every w_y = 1
            losses[correction] = float(total_loss(terms, trainer.cfg.weights(), trainer.cfg.alpha))
            estimates = {"em": [0.7, 0.1, 0.1, 0.1], "bbse": [0.25] * 4}
            trainer.correct_towards(estimates, conditioning=0.1)  # a classifier near chance: not trusted
            assert trainer.state.prior == []
            trainer.correct_towards(estimates, conditioning=0.5)
            shifted = trainer.terms(source, target, step=1)
        if correction == "em":
            assert float(shifted["feature_mmd"]) != pytest.approx(float(terms["feature_mmd"]))
            assert trainer.state.prior == pytest.approx([0.7, 0.1, 0.1, 0.1])
    # D_q with the uniform q is D - log C: the loss differs by the diversity weight times log C, nothing else
    assert losses["em"] == pytest.approx(losses["none"] + 0.5 * math.log(4), rel=1e-6)


@pytest.mark.slow
def test_a_run_with_em_correction_on_a_balanced_target_records_estimates_and_truth(tmp_path: Path) -> None:
    _train(tmp_path, *PHANTOMS, "--alignment", "ours", "--prior-correction", "em", "--target-prior", "balanced",
           "--target-length", "2000", "--eval-length", "2000", "--steps", "4", "--eval-every", "2", "--name", "p")
    results = _results(tmp_path / "p-ours+em-seed0")
    assert results["alignment"] == "ours+em" and results["prior_correction"] == "em"
    assert results["images"]["target"] == 56 and results["images"]["target_evaluation"] == 40  # 14 and 10 a class
    assert results["target_prior"] == {"asked": "balanced", "drawn": [0.25] * 4, "true": [0.25] * 4,
                                       "true_adaptation": [0.25] * 4}
    assert results["source_prior"]["batches"] == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])  # 58 images, no Pneumonia
    assert len(results["source_prior"]["validation_images"]) == 4
    for entry in results["history"]:
        assert set(entry["prior_estimates"]) == {"bbse", "em"}
        assert all(sum(q) == pytest.approx(1.0) and len(q) == 4 for q in entry["prior_estimates"].values())
    assert results["prior_estimates"] == results["history"][-1]["prior_estimates"]
    assert all("prior_estimates" in figure for figure in results["figures"].values())
    state = torch.load(tmp_path / "p-ours+em-seed0" / "checkpoint_4.pt", weights_only=True)
    trusted = [e for e in results["history"] if e["prior_conditioning"] >= RELIABLE_CONDITIONING]
    expected = floored_prior(torch.tensor(trusted[-1]["prior_estimates"]["em"]), 1e-3).tolist() if trusted else []
    assert state["run"]["prior"] == pytest.approx(expected)  # the latest trusted estimate, checkpointed for a resume


def test_a_target_prior_needs_a_labelled_target_and_a_correction_a_term_to_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    err = _error(runs, capsys, *PHANTOMS, "--steps", "1", "--alignment", "none", "--prior-correction", "em")
    assert "--prior-correction em weighs the MMD and diversity terms, which the none preset leaves off" in err
    err = _error(runs, capsys, *PHANTOMS, "--steps", "1", "--prior-correction", "emm")
    assert "unknown prior correction 'emm'; did you mean 'em'?" in err
    err = _error(runs, capsys, *PHANTOMS, "--steps", "1", "--target-prior", "0.5,0.5")
    assert "--target-prior '0.5,0.5' gives 2 shares; the task has 4 classes" in err
    err = _error(runs, capsys, *PHANTOMS, "--steps", "1", "--target-prior", "balanced")  # 64 images: no Pneumonia
    assert "the adaptation images of --target phantom-nih hold no image of Pneumonia" in err
    monkeypatch.setattr(adapt_data_module, "known_labels", lambda images: None)  # as a target without labels
    err = _error(runs, capsys, *PHANTOMS, "--steps", "1", "--target-prior", "balanced")
    assert "--target-prior balanced resamples a labelled target" in err
    assert not runs.exists()


def test_confusion_conditioning_closed_forms() -> None:
    assert confusion_conditioning(torch.eye(3) / 3) == pytest.approx(1.0)  # always right
    assert confusion_conditioning(torch.tensor([[0.3, 0.2], [0.3, 0.2]])) == pytest.approx(0.0, abs=1e-12)  # chance
    assert confusion_conditioning(torch.tensor([[0.6, 0.4], [0.0, 0.0]])) == pytest.approx(0.0, abs=1e-12)  # one class
    tpr, tnr = 0.7, 0.9  # two classes: sigma_min * sigma_max = TPR + TNR - 1
    conditional = torch.tensor([[tnr, 1 - tpr], [1 - tnr, tpr]], dtype=torch.float64)
    joint = conditional * torch.tensor([0.8, 0.2], dtype=torch.float64)  # any validation prior
    sigma = torch.linalg.svdvals(conditional)
    assert confusion_conditioning(joint) == pytest.approx(float(sigma.min()))
    assert float(sigma.min() * sigma.max()) == pytest.approx(tpr + tnr - 1)
    absent = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])  # class 1 not in validation
    assert confusion_conditioning(absent) == pytest.approx(1.0)
