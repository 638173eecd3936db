"""adapt.validators (SND, DEV, BNM) on closed-form cases, and the selection table of adapt.selection / report."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adapt.cells import complete_results, selected_figures, summary_line
from adapt.outputs import Outputs
from adapt.report import GROUP_SETTINGS, render, selection_groups, table
from adapt.selection import select, selection_gaps
from adapt.validators import (
    batch_nuclear_norm,
    deep_embedded_validation,
    density_ratios,
    dev_risk,
    logistic_regression,
    soft_neighbourhood_density,
    validator_scores,
)


def test_snd_closed_forms() -> None:
    same = torch.tensor([[0.7, 0.2, 0.1]]).repeat(6, 1)  # every neighbour equally similar: uniform over N - 1
    assert soft_neighbourhood_density(same) == pytest.approx(math.log(5))
    m, t = 3, 0.05  # two clusters of m one-hot rows: similarity 1 inside a cluster, 0 across
    two = torch.eye(2)[[0] * m + [1] * m]
    a = math.exp(1 / t)
    z = (m - 1) * a + m
    expected = -((m - 1) * a / z * math.log(a / z) + m / z * math.log(1 / z))
    assert soft_neighbourhood_density(two, t) == pytest.approx(expected)
    assert soft_neighbourhood_density(two) < soft_neighbourhood_density(same)  # sparser neighbourhoods
    with pytest.raises(ValueError, match="two predictions"):
        soft_neighbourhood_density(same[:1])


def test_bnm_closed_forms() -> None:
    n, c = 8, 4
    spread = torch.eye(c)[torch.arange(n) % c]  # one-hot over C classes, N / C each
    assert batch_nuclear_norm(spread) == pytest.approx(math.sqrt(c / n))
    p = torch.tensor([0.5, 0.3, 0.2])
    same = p.repeat(n, 1)  # rank 1: nuclear norm = Frobenius norm
    assert batch_nuclear_norm(same) == pytest.approx(float(torch.linalg.norm(same)) / n)
    assert batch_nuclear_norm(same) == pytest.approx(float(p.norm()) / math.sqrt(n))
    assert batch_nuclear_norm(torch.full((n, c), 1 / c)) == pytest.approx(1 / math.sqrt(n * c))
    assert batch_nuclear_norm(torch.full((n, c), 1 / c)) < batch_nuclear_norm(spread)


def test_logistic_regression_separates_and_reaches_its_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 2, generator=g) - 3, torch.randn(40, 2, generator=g) + 3]).double()
    y = torch.cat([torch.zeros(40), torch.ones(40)]).double()
    l2 = 0.01
    w, b = logistic_regression(x, y, l2)
    assert ((x @ w + b > 0).double() == y).all()
    residual = torch.sigmoid(x @ w + b) - y  # optimality: the regularised gradient vanishes
    torch.testing.assert_close(x.T @ residual / len(y) + l2 * w, torch.zeros(2, dtype=torch.float64), atol=1e-7,
                               rtol=0)
    assert float(residual.mean()) == pytest.approx(0.0, abs=1e-7)
    w2, b2 = logistic_regression(x, y, l2)
    assert torch.equal(w, w2) and torch.equal(b, b2)  # deterministic


def test_dev_risk_closed_forms() -> None:
    losses = torch.tensor([0.1, 0.5, 2.0, 0.4])
    assert dev_risk(torch.ones(4), losses) == pytest.approx(0.75)  # w = 1: the mean loss
    w = torch.tensor([0.5, 1.5, 0.5, 1.5])
    wl = w * losses
    eta = -float(torch.cov(torch.stack([wl, w]))[0, 1] / w.var())
    assert dev_risk(w, losses) == pytest.approx(float(wl.mean()) + eta * float(w.mean()) - eta)
    constant = torch.full((4,), 0.3)  # constant losses: wl is a multiple of w, the control variate removes w
    assert dev_risk(w, constant) == pytest.approx(0.3)


def test_dev_weighs_up_source_images_that_look_like_the_target() -> None:
    g = torch.Generator().manual_seed(1)
    source = torch.randn(60, 3, generator=g)
    target = torch.randn(60, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0])
    scored = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    w = density_ratios(source, target, scored)
    assert w[0] > 1 > w[2] and w[0] > w[1] > w[2]
    same = density_ratios(source, source.repeat(2, 1), scored)  # indistinguishable (n_t = 2 n_s): w = 1
    torch.testing.assert_close(same, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)


def _outputs(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None = None) -> Outputs:
    return Outputs(logits, features, torch.full((len(logits),), -1) if labels is None else labels)


def test_dev_of_indistinguishable_domains_is_the_mean_validation_loss() -> None:
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(10, 3, generator=g), torch.arange(10) % 3
    validation = _outputs(torch.ones(10, 4), logits, labels)
    target = _outputs(torch.ones(7, 4), torch.randn(7, 3, generator=g))
    mean_loss = float(F.cross_entropy(logits.double(), labels))
    assert deep_embedded_validation(validation, target, seed=0) == pytest.approx(mean_loss)
    assert math.isnan(deep_embedded_validation(validation, _outputs(torch.ones(1, 4), torch.zeros(1, 3)), seed=0))
    with pytest.raises(ValueError, match="label"):
        deep_embedded_validation(target, validation, seed=0)


def test_dev_prefers_the_network_that_is_right_on_target_like_source_images() -> None:
    g = torch.Generator().manual_seed(3)
    features = torch.cat([torch.randn(20, 2, generator=g) + 3, torch.randn(20, 2, generator=g) - 3])
    labels = torch.zeros(40, dtype=torch.long)
    right, wrong = torch.tensor([[4.0, -4.0]]), torch.tensor([[-4.0, 4.0]])
    near_right = torch.cat([right.repeat(20, 1), wrong.repeat(20, 1)])  # right on the target-like half only
    far_right = torch.cat([wrong.repeat(20, 1), right.repeat(20, 1)])
    target = _outputs(torch.randn(40, 2, generator=g) + 3, torch.zeros(40, 2))
    near = deep_embedded_validation(_outputs(features, near_right, labels), target, seed=0)
    far = deep_embedded_validation(_outputs(features, far_right, labels), target, seed=0)
    assert near < far  # both have the same unweighted source validation loss


def test_validator_scores_record_plain_numbers_or_none() -> None:
    g = torch.Generator().manual_seed(4)
    validation = _outputs(torch.randn(12, 5, generator=g), torch.randn(12, 2, generator=g), torch.arange(12) % 2)
    scores = validator_scores(validation, _outputs(torch.randn(9, 5, generator=g), torch.randn(9, 2, generator=g)),
                              seed=0)
    assert set(scores) == {"snd", "dev_risk", "bnm"} and all(isinstance(v, float) for v in scores.values())
    lone = validator_scores(validation, _outputs(torch.randn(1, 5), torch.randn(1, 2)), seed=0)
    assert lone["snd"] is None and lone["dev_risk"] is None and isinstance(lone["bnm"], float)


def _entry(step: int, accuracy: float | None, snd: float, dev: float, entropy: float) -> dict:
    entry = {"step": step, "source_validation_balanced_accuracy": 0.5, "information_maximisation": 0.0,
             "snd": snd, "dev_risk": dev, "bnm": 0.1, "prediction_entropy": entropy, "collapsed": None}
    return entry if accuracy is None else entry | {"balanced_accuracy": accuracy}


def test_lowest_wins_for_dev_and_entropy_and_an_unlabelled_history_has_no_oracle() -> None:
    history = [_entry(1, 0.6, 3.0, 0.2, 0.9), _entry(2, 0.8, 1.0, 0.5, 0.3), _entry(3, 0.7, None, None, 0.3)]
    chosen = {name: entry["step"] for name, entry in select(history).items()}
    assert chosen == {"final": 3, "source_validation": 3, "information_maximisation": 3, "snd": 1, "dev": 1,
                      "bnm": 3, "target_entropy": 3, "oracle": 2}
    unlabelled = select([_entry(1, None, 3.0, 0.2, 0.9), _entry(2, None, 1.0, 0.5, 0.3)])
    assert "oracle" not in unlabelled and unlabelled["dev"]["step"] == 1


def test_selection_table_gaps_on_hand_made_histories() -> None:
    run_a = [_entry(1, 0.6, 3.0, 0.2, 0.9), _entry(2, 0.8, 1.0, 0.5, 0.3)]  # snd, dev: 1 (gap 0.2); entropy: 2 (0)
    run_b = [_entry(1, 0.5, 1.0, 0.9, 0.5), _entry(2, 0.9, 2.0, 0.1, 0.6)]  # snd, dev: 2 (gap 0); entropy: 1
    unlabelled = [_entry(1, None, 1.0, 0.1, 0.1)]
    rows = {r["criterion"]: r for r in selection_gaps([run_a, run_b, unlabelled, []])}
    assert rows["snd"] == pytest.approx({"criterion": "snd", "mean_gap": 0.1, "worst_gap": 0.2, "runs": 2})
    assert rows["target_entropy"] == pytest.approx(
        {"criterion": "target_entropy", "mean_gap": 0.2, "worst_gap": 0.4, "runs": 2})
    assert rows["final"]["mean_gap"] == 0.0 and "oracle" not in rows
    assert [r["criterion"] for r in selection_gaps([run_a, run_b])] == [  # smallest mean gap first, then by name
        "bnm", "final", "information_maximisation", "source_validation", "dev", "snd", "target_entropy"]
    assert selection_gaps([unlabelled]) == []

    def run(alignment: str, target: str, history: list[dict]) -> dict:
        final = history[-1]
        return {"target": target, "source": "phantom", "task": "v3-0s", "backbone": "resnet18", "image_size": 32,
                "steps": 2, "alignment": alignment, "seed": 0, "history": history,
                "figures": {"final": {"balanced_accuracy": final.get("balanced_accuracy"), "collapsed": None}}}

    runs = [run("none", "phantom", run_a), run("ours", "phantom", run_b), run("ours", "folder", unlabelled)]
    overall, groups = selection_groups(runs), selection_groups(runs, GROUP_SETTINGS)
    assert {r["criterion"]: r["mean_gap"] for r in overall}["snd"] == pytest.approx(0.1)
    assert {r["target"] for r in groups} == {"phantom"}  # the unlabelled group has no row
    rows = table(runs)
    assert [r["balanced_accuracy"] for r in rows] == [None, 0.9, 0.8]
    text = render(rows, "markdown", "final", overall, groups)
    assert "| folder | phantom | v3-0s | resnet18 | 32 | 2 | None | natural | ours | n/a | 0 | no |" in text
    assert "| snd | 0.1000 | 0.2000 | 2 |" in text
    assert render(rows, "csv", "final", overall, groups, "selection").splitlines()[0] == \
        "criterion,mean_gap,worst_gap,runs"


def test_an_unlabelled_run_records_label_free_figures_only() -> None:
    chosen = select([_entry(1, None, 3.0, 0.2, 0.9), _entry(2, None, 1.0, 0.5, 0.3)])
    figures = {name: selected_figures(entry) for name, entry in chosen.items()}
    assert figures["snd"]["balanced_accuracy"] is None and figures["snd"]["snd"] == 3.0
    assert complete_results({"seed": 0, "figures": figures}) and not complete_results({"seed": 0, "figures": {}})
    line = summary_line({"alignment": "ours", "seed": 0, "balanced_accuracy": None, "collapsed": None})
    assert line == "ours seed 0: no target labels, label-free figures only"
