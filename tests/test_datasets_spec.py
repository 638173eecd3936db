"""Every fact about a data set comes from its spec: held-out split, default counts, capping, label table, groups."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from datasets import registry
from datasets.findings import CHEXPERT, NIH
from datasets.label_tables import read_nih_table
from datasets.phantoms.dataset import PhantomDataset
from datasets.registry import build_dataset, default_counts, get_spec
from datasets.summary import tabled
from evaluate.protocol.task_data import DataChoice, task_data
from plumbing.errors import UserError


def test_held_out_and_validation_splits() -> None:
    splits = {name: spec.eval_split for name, spec in registry.REGISTRY.items()}
    assert splits == {"chexpert": "valid", "chestxray8": "valid", "siim-covid": "valid", "isic2019": "valid",
                      "phantom": "test", "phantom-nih": "test", "synthetic": "val", "folder": "test"}
    own = {name: spec.validation_split for name, spec in registry.REGISTRY.items() if spec.validation_split}
    assert own == {"synthetic": "val", "folder": "val"}


def test_default_counts_only_for_generated_data_sets() -> None:
    phantom, chexpert = get_spec("phantom-nih"), get_spec("chexpert")
    assert (phantom.image_count(None), phantom.image_count(None, held_out=True)) == (2000, 500)
    assert phantom.image_count(7) == phantom.image_count(7, held_out=True) == 7
    assert chexpert.image_count(None) is None and chexpert.image_count(9, held_out=True) == 9
    assert default_counts() == "phantom, phantom-nih: 2000"
    assert default_counts(held_out=True) == "phantom, phantom-nih: 500"


def test_one_rule_caps_the_number_of_images() -> None:
    assert get_spec("phantom").count_options(5) == {"length": 5}
    assert get_spec("isic2019").count_options(5) == {"max_samples": 5}
    assert get_spec("synthetic").count_option is None and get_spec("synthetic").count_options(None) == {}
    with pytest.raises(UserError, match="^synthetic takes no image count"):
        get_spec("synthetic").count_options(5)
    assert len(DataChoice("phantom", None, 3, "0s", 5).build("train", 32, False)) == 5


def test_label_tables_come_from_the_specs() -> None:
    assert list(tabled()) == ["chexpert", "chestxray8", "phantom", "phantom-nih"]
    assert get_spec("phantom").read_label_table().schema == CHEXPERT
    assert get_spec("phantom-nih").read_label_table(views="PA").schema == NIH
    with pytest.raises(UserError, match="isic2019 has no label table"):
        get_spec("isic2019").read_label_table()
    phantom = PhantomDataset("phantom-nih", resolution=32, length=2)
    assert np.array_equal(phantom.vectors, read_nih_table().vectors)


def test_groups_and_channels() -> None:
    groups = {name: spec.groups for name, spec in registry.REGISTRY.items() if spec.groups}
    assert groups == {"chexpert": "patient", "chestxray8": "patient", "siim-covid": "study", "folder": "patient"}
    assert {name for name, spec in registry.REGISTRY.items() if spec.channels == 3} == {"isic2019"}


def test_a_misspelt_data_set_is_suggested() -> None:
    with pytest.raises(UserError) as exc:
        get_spec("chexpret", option="--data")
    assert str(exc.value).startswith("--data: unknown data set 'chexpret'; did you mean 'chexpert'? (known: chexpert, ")


def test_a_new_data_set_is_one_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec registered under a new name brings its held-out split and counts; no table keyed by names is needed."""
    spec = dataclasses.replace(get_spec("phantom"), name="phantom-copy", eval_split="valid", lengths=(30, 20))
    monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    train = DataChoice(spec.name, None, 3, "0s", spec.image_count(None))
    evaluation = DataChoice(spec.name, None, 3, "0s", spec.image_count(None, held_out=True))
    data = task_data(train, evaluation, 32, 0)
    assert data.sizes() == {"train": 27, "validation": 3, "evaluation": 20}
    assert data.evaluation[0]["id"].split("/")[1] == "valid"
    assert len(build_dataset(spec.name, split="train", resolution=32)) == 2000  # the reader's own default
