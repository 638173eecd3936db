"""Tests for :mod:`evaluate.metrics`: every metric equals scikit-learn's, also on degenerate inputs and when two
gloo ranks evaluate uneven shards of one data set."""

from __future__ import annotations

import json
import math
import socket
import warnings
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from evaluate.metrics import (
    METRIC_NAMES,
    MISSING,
    MacroAUROC,
    binary_auroc,
    classification_metrics,
    metrics_report,
    missing_classes_note,
    scores_report,
)
from plumbing.errors import UserError


def _data(seed: int, n: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets that agree often enough for every metric to be informative."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=generator)
    logits = torch.randn(n, num_classes, generator=generator) + 1.5 * torch.nn.functional.one_hot(targets, num_classes)
    return logits, targets


def _evaluate(logits: torch.Tensor, targets: torch.Tensor, num_classes: int, batch: int = 16) -> dict[str, Any]:
    """``engine.state.metrics`` of an evaluator that ran over ``(logits, targets)`` in batches."""
    engine = Engine(lambda _engine, data: data)
    for name, metric in classification_metrics(num_classes).items():
        metric.attach(engine, name)
    batches = [(logits[i : i + batch], targets[i : i + batch]) for i in range(0, len(targets), batch)]
    return engine.run(batches).metrics


def _reference(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """scikit-learn's values for the same data; AUROC over the classes with positives and negatives."""
    # Imported here, not at the top: the spawned gloo ranks import this module and need no scikit-learn (seconds).
    from sklearn.metrics import (
        balanced_accuracy_score,
        confusion_matrix,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y = targets.numpy()
    pred = logits.argmax(dim=1).numpy()
    scores = torch.softmax(logits.double(), dim=1).numpy()
    labels = list(range(num_classes))
    qualified = [c for c in labels if 0 < (y == c).sum() < len(y)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes absent from y_true or y_pred
        balanced = balanced_accuracy_score(y, pred)
    return {
        "confusion": confusion_matrix(y, pred, labels=labels),
        "balanced_accuracy": balanced,
        "recall": recall_score(y, pred, labels=labels, average=None, zero_division=0),
        "precision": precision_score(y, pred, labels=labels, average=None, zero_division=0),
        "predicted_histogram": np.bincount(pred, minlength=num_classes),
        "auroc": np.mean([roc_auc_score(y == c, scores[:, c]) for c in qualified]) if qualified else math.nan,
    }


def _assert_matches(metrics: dict[str, Any], reference: dict[str, Any]) -> None:
    np.testing.assert_array_equal(np.asarray(metrics["confusion"]), reference["confusion"])
    np.testing.assert_array_equal(np.asarray(metrics["predicted_histogram"]), reference["predicted_histogram"])
    for name in ("balanced_accuracy", "recall", "precision", "auroc"):
        np.testing.assert_allclose(np.asarray(metrics[name]), reference[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("num_classes", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_inputs_match_sklearn(seed: int, num_classes: int) -> None:
    logits, targets = _data(seed, 101, num_classes)
    metrics = _evaluate(logits, targets, num_classes)
    assert set(metrics) == set(METRIC_NAMES)
    _assert_matches(metrics, _reference(logits, targets, num_classes))
    if num_classes > 2:  # every class is present: the macro one-vs-rest AUROC of sklearn itself
        from sklearn.metrics import roc_auc_score

        scores = torch.softmax(logits.double(), dim=1).numpy()
        expected = roc_auc_score(targets.numpy(), scores, multi_class="ovr", average="macro")
        np.testing.assert_allclose(metrics["auroc"], expected, rtol=1e-12)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_scores_report_of_gathered_tensors_equals_the_evaluators_report(num_classes: int) -> None:
    logits, targets = _data(5, 77, num_classes)
    classes = [f"c{i}" for i in range(num_classes)]
    assert scores_report(logits, targets, classes) == metrics_report(_evaluate(logits, targets, num_classes), classes)


def test_class_never_predicted_has_precision_zero() -> None:
    logits, targets = _data(3, 60, 3)
    logits[:, 2] = -20.0
    metrics = _evaluate(logits, targets, 3)
    assert metrics["predicted_histogram"][2] == 0
    assert metrics["precision"][2] == 0.0
    assert metrics["recall"][2] == 0.0  # class 2 is in the targets but never predicted
    _assert_matches(metrics, _reference(logits, targets, 3))


def test_class_absent_from_targets_is_ignored_by_balanced_accuracy_and_auroc() -> None:
    logits, targets = _data(4, 80, 3)
    logits = torch.cat([logits, torch.randn(80, 1, generator=torch.Generator().manual_seed(5)) + 0.5], dim=1)
    metrics = _evaluate(logits, targets, 4)
    assert metrics["predicted_histogram"][3] > 0  # class 3 is predicted, never a target
    assert metrics["recall"][3] == 0.0 and metrics["precision"][3] == 0.0
    pred = logits.argmax(dim=1)
    recall = [((pred == c) & (targets == c)).sum().item() / (targets == c).sum().item() for c in range(3)]
    np.testing.assert_allclose(metrics["balanced_accuracy"], np.mean(recall), rtol=1e-12)
    _assert_matches(metrics, _reference(logits, targets, 4))


def test_tied_scores_give_sklearn_auroc() -> None:
    generator = torch.Generator().manual_seed(6)
    logits = torch.randint(0, 2, (90, 3), generator=generator).double()
    targets = torch.randint(0, 3, (90,), generator=generator)
    scores = torch.softmax(logits, dim=1)
    assert len(torch.unique(scores[:, 0])) < 10  # heavily tied
    metrics = _evaluate(logits, targets, 3)
    _assert_matches(metrics, _reference(logits, targets, 3))
    assert binary_auroc(torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.tensor([False, True, False, True])) == 0.5
    assert binary_auroc(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([False, False, True, True])) == 0.875


def test_single_target_class_gives_nan_auroc_and_none_in_report() -> None:
    logits, _ = _data(7, 40, 3)
    targets = torch.ones(40, dtype=torch.int64)
    metrics = _evaluate(logits, targets, 3)
    assert math.isnan(metrics["auroc"])
    _assert_matches(metrics, _reference(logits, targets, 3))
    report = metrics_report(metrics, ["a", "b", "c"])
    assert report["auroc"] is None
    assert report["balanced_accuracy"] == report["recall"]["b"]
    json.dumps(report, allow_nan=False)


def test_metrics_report_is_json_ready() -> None:
    logits, targets = _data(8, 50, 3)
    metrics = _evaluate(logits, targets, 3)
    report = metrics_report(metrics, ["normal", "pneumonia", "effusion"])
    assert set(report) == {
        "balanced_accuracy",
        "auroc",
        "recall",
        "precision",
        "confusion_matrix",
        "predicted_histogram",
        "n",
    }
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["n"] == 50 and isinstance(report["n"], int)
    assert report["confusion_matrix"] == _reference(logits, targets, 3)["confusion"].tolist()
    assert list(report["recall"]) == ["normal", "pneumonia", "effusion"]
    assert all(isinstance(v, int) for v in report["predicted_histogram"].values())
    assert sum(report["predicted_histogram"].values()) == 50
    assert isinstance(report["auroc"], float) and report["auroc"] == pytest.approx(metrics["auroc"])
    with pytest.raises(UserError, match="2 class names given for 3 classes"):
        metrics_report(metrics, ["normal", "pneumonia"])
    with pytest.raises(UserError, match="metrics lack auroc"):
        metrics_report({k: v for k, v in metrics.items() if k != "auroc"}, ["normal", "pneumonia", "effusion"])


def test_user_errors() -> None:
    with pytest.raises(UserError, match="num_classes must be at least 2"):
        classification_metrics(1)
    with pytest.raises(UserError, match="num_classes must be at least 2"):
        MacroAUROC(0)


def test_auroc_without_samples_is_not_computable() -> None:
    metric = MacroAUROC(3)
    with pytest.raises(NotComputableError):
        metric.compute()
    with pytest.raises(ValueError, match="targets must lie in"):
        metric.update((torch.zeros(2, 3), torch.tensor([0, 3])))


_SIZE, _CLASSES, _SPLIT = 120, 4, 37  # rank 0 evaluates the first 37 samples, rank 1 the other 83


def _sharded_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The distributed test's data set; class 3 occurs only in rank 1's shard, so no rank can do without the other."""
    logits, targets = _data(9, _SIZE, _CLASSES)
    targets[:_SPLIT] %= 3
    return logits, targets


def _distributed_worker(_local_rank: int, out_dir: str) -> None:
    """Run on each gloo rank: evaluate this rank's shard and save the metrics for the parent to compare."""
    torch.set_num_threads(1)
    rank = idist.get_rank()
    logits, targets = _sharded_data()
    shard = slice(0, _SPLIT) if rank == 0 else slice(_SPLIT, _SIZE)
    metrics = dict(_evaluate(logits[shard], targets[shard], _CLASSES, batch=10))
    # Uneven down to empty: only rank 0 updates a stand-alone AUROC, rank 1 contributes no samples.
    auroc = MacroAUROC(_CLASSES)
    if rank == 0:
        auroc.update((logits, targets))
    metrics["auroc_rank0_only"] = auroc.compute()
    torch.save(metrics, Path(out_dir) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_with_uneven_shards_match_single_process(tmp_path: Path) -> None:
    logits, targets = _sharded_data()
    assert (targets[:_SPLIT] == 3).sum() == 0 and (targets[_SPLIT:] == 3).sum() > 0
    whole = _evaluate(logits, targets, _CLASSES)
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_addr="127.0.0.1", master_port=_free_port()) as p:
        p.run(_distributed_worker, str(tmp_path))
    for rank in range(2):
        metrics = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        _assert_matches(metrics, _reference(logits, targets, _CLASSES))
        for name in METRIC_NAMES:
            np.testing.assert_allclose(np.asarray(metrics[name]), np.asarray(whole[name]), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(metrics["auroc_rank0_only"], whole["auroc"], rtol=1e-12)


def test_a_class_missing_from_the_evaluation_set_is_listed_and_qualifies_the_balanced_accuracy() -> None:
    logits, _ = _data(9, 40, 3)
    targets = torch.cat([torch.zeros(20, dtype=torch.int64), torch.full((20,), 2)])  # no class 1
    report = metrics_report(_evaluate(logits, targets, 3), ["No Finding", "Pneumothorax", "Pneumonia"])
    assert report[MISSING] == ["Pneumothorax"]
    assert report["balanced_accuracy"] == pytest.approx((report["recall"]["No Finding"]
                                                         + report["recall"]["Pneumonia"]) / 2)  # figure kept
    assert missing_classes_note(report) == " over the 2 classes present (no evaluation image of Pneumothorax)"
    whole = metrics_report(_evaluate(*_data(8, 50, 3), 3), ["a", "b", "c"])
    assert MISSING not in whole and missing_classes_note(whole) == ""
