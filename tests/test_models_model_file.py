"""models.model_file: the ``training`` record every trainer writes into its model files."""

from __future__ import annotations

import pytest

from models.model_file import training_record


def test_every_trainer_builds_the_model_files_training_record_the_same_way() -> None:
    run = {"data_description": "phantom (64 images)", "command": "python -m x", "init_provenance": {"init": "scratch"}}
    record = training_record("python -m x", run, epoch=3)
    assert record == {"trained_by": "python -m x", "data": "phantom (64 images)", "command": "python -m x",
                      "resumed_with": [], "init": {"init": "scratch"}, "epoch": 3}
    assert set(training_record("python -m y", {})) == {"trained_by", "data", "command", "resumed_with", "init"}
    with pytest.raises(ValueError, match="may not replace init"):
        training_record("python -m x", run, init="imagenet")
