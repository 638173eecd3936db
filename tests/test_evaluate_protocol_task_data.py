"""evaluate.protocol.task_data: validation held out by patient where the reader knows patients, else by image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluate.protocol.task_data import DataChoice, groups_of, task_data, validation_rows
from tests import real_layouts as rl


def test_validation_rows_keep_every_group_on_one_side() -> None:
    groups = np.array([f"p{k % 37}" for k in range(400)], dtype=object)  # 37 patients, 10-11 images each
    held = validation_rows(groups, 400, seed=3)
    assert np.array_equal(held, validation_rows(groups, 400, seed=3))
    assert not np.array_equal(held, validation_rows(groups, 400, seed=4))
    assert not set(groups[held]) & set(groups[~held])
    assert 40 <= held.sum() < 40 + 11  # whole patients until a tenth is held
    by_image = validation_rows(None, 400, seed=3)
    assert by_image.sum() == 40 and validation_rows(None, 5, seed=0).sum() == 1


def test_chexpert_validation_holds_out_whole_patients(tmp_path: Path) -> None:
    root = rl.write_chexpert(tmp_path, n_frontal=120, n_valid=8)
    choice = DataChoice("chexpert", str(root), 2, "Xs", None)
    data = task_data(choice, choice, 32, seed=0)
    full = data.train.dataset
    patients = groups_of(full)
    assert patients is not None and len(set(patients)) < len(patients)  # patients with several images
    train_patients = set(patients[data.train.indices])
    validation_patients = set(patients[data.validation.indices])
    assert validation_patients and not train_patients & validation_patients
    assert len(data.train) + len(data.validation) == len(full)
    evaluation_ids = data.evaluation.records.ids  # the official valid.csv (rows of a class of the task)
    assert 0 < len(evaluation_ids) <= 8 and all("/valid/" in str(i) for i in evaluation_ids)
