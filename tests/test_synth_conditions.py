"""synth.conditions: 0s conditions carry devices at the real rate (or none with ``clear``), draws per sample."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.findings import CHEXPERT
from datasets.label_tables import read_chexpert_table
from datasets.label_tasks import assign_classes, label_task
from synth.conditions import ConditionSampler

DEVICES = CHEXPERT.index("Support Devices")
PER_CLASS = 4000


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return read_chexpert_table().vectors


def _draw(sampler: ConditionSampler, n: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n * sampler.num_classes)
    return sampler.labels(idx), sampler.conditions(7, "train", idx)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_0s_conditions_carry_devices_at_the_rate_of_the_class_members(vectors: np.ndarray, version: int) -> None:
    task = label_task(version, "0s")
    labels, cond = _draw(ConditionSampler(task, CHEXPERT, vectors, devices="empirical"))
    members = assign_classes(vectors, CHEXPERT, task)
    for c, name in enumerate(task.classes):
        real = float((vectors[members == c, DEVICES] == 1).mean())
        drawn = float(cond[labels == c, DEVICES].mean())
        sigma = np.sqrt(real * (1 - real) / PER_CLASS)
        assert 0.1 < real < 0.9, (name, real)  # the check below means something
        assert abs(drawn - real) < 4 * sigma, (name, drawn, real)
        findings = cond[labels == c][:, CHEXPERT.finding_indices]
        assert (findings.sum(axis=1) == (0 if name == "No Finding" else 1)).all()  # still isolated findings


def test_clear_gives_no_devices_and_the_class_findings_only(vectors: np.ndarray) -> None:
    task = label_task(3, "0s")
    labels, cond = _draw(ConditionSampler(task, CHEXPERT, vectors, devices="clear"), 500)
    assert not cond[:, DEVICES].any()
    assert not cond[labels == 0].any()  # No Finding: the all-zero vector
    for c, name in enumerate(task.classes[1:], start=1):
        expected = np.zeros(len(CHEXPERT.columns), np.float32)
        expected[CHEXPERT.index(name)] = 1
        assert (cond[labels == c] == expected).all()


def test_a_draw_depends_only_on_seed_split_and_index(vectors: np.ndarray) -> None:
    sampler = ConditionSampler(label_task(2, "0s"), CHEXPERT, vectors, devices="empirical")
    whole = sampler.conditions(3, "train", np.arange(200))
    part = sampler.conditions(3, "train", np.arange(57, 131))
    assert np.array_equal(part, whole[57:131])
    assert not np.array_equal(sampler.conditions(3, "val", np.arange(200)), whole)


def test_xs_takes_no_device_policy_and_keeps_its_conditions(vectors: np.ndarray) -> None:
    task = label_task(3, "Xs")
    labels, cond = _draw(ConditionSampler(task, CHEXPERT, vectors, devices=None), 500)
    assert not cond[labels == 0].any()
    assert cond[labels > 0, DEVICES].mean() > 0.3
    for bad in ("empirical", "clear"):
        with pytest.raises(ValueError, match="setting Xs takes the device policy None"):
            ConditionSampler(task, CHEXPERT, vectors, devices=bad)
    with pytest.raises(ValueError, match="empirical or clear"):
        ConditionSampler(label_task(3, "0s"), CHEXPERT, vectors, devices=None)
