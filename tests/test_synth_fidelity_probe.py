"""Label fidelity while a GAN trains (synth.fidelity_probe and synth.train --fidelity-classifier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from datasets.findings import CHEXPERT
from datasets.label_tasks import VERSIONS
from models.backbones import Classifier, build_backbone
from models.model_file import save_model
from plumbing.errors import UserError
from plumbing.training import latest_checkpoint, load_checkpoint
from synth.conditions import condition_vectors
from synth.fidelity_probe import FidelityProbe, probe_task
from synth.generator import Generator
from synth.network_config import NetworkConfig
from synth.train import main


class ConstantClass(torch.nn.Module):
    """A classifier that always answers class ``c`` (its agreement is 1 for ``c`` and 0 elsewhere)."""

    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__()
        self.c, self.num_classes = c, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full((len(x),), self.c), self.num_classes).float()


def classifier_file(path: Path, classes: tuple[str, ...] = VERSIONS[1], size: int = 32) -> Path:
    torch.manual_seed(0)
    model = Classifier(build_backbone("tiny", 1), len(classes))
    save_model(path, model.backbone, image_size=size, training={"data": "test"}, head=model.head, classes=classes)
    return path


def test_probe_task_follows_the_classifier_classes() -> None:
    assert probe_task(VERSIONS[3], None).name == "v3-0s"
    assert probe_task(VERSIONS[3], "3-Xs").name == "v3-Xs"
    with pytest.raises(UserError, match="has the classes"):
        probe_task(VERSIONS[3], "1-0s")
    with pytest.raises(UserError, match="no label task"):
        probe_task(("a", "b"), None)


def test_probe_agreement_with_a_classifier_right_by_construction(tmp_path: Path) -> None:
    probe = FidelityProbe(classifier_file(tmp_path / "c.safetensors"), CHEXPERT, condition_vectors("chexpert"),
                          per_class=6)
    assert probe.labels.tolist() == [0, 1] * 6
    assert (probe.conditions[probe.labels == 1, CHEXPERT.index("Pneumothorax")] == 1).all()
    generator = Generator(NetworkConfig(resolution=32, c_dim=len(CHEXPERT.columns), z_dim=16, w_dim=16,
                                        channel_base=64, channel_max=16, mapping_layers=1))
    first = probe.measure(generator, 32, 1.0)
    assert set(first) == set(VERSIONS[1]) and first == probe.measure(generator, 32, 1.0)
    probe.model = ConstantClass(1, 2)
    assert probe.measure(generator, 32, 1.0) == {"No Finding": 0.0, "Pneumothorax": 1.0}


def test_train_logs_label_fidelity_at_each_snapshot(tmp_path: Path) -> None:
    clf = classifier_file(tmp_path / "clf.safetensors")
    args = ["--data", "phantom", "--data-length", "16", "--resolution", "32", "--batch-size", "8",
            "--snapshot-kimg", "0.016", "--kimg", "0.032", "--device", "cpu", "--no-progress",
            "--runs-dir", str(tmp_path), "--fidelity-classifier", str(clf), "--fidelity-images", "4"]
    main([*args, "--name", "probed"])
    run = tmp_path / "probed"
    lines = [json.loads(line) for line in (run / "samples" / "label_fidelity.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [2, 4]
    assert all(line["task"] == "v1-0s" and set(line["agreement"]) == set(VERSIONS[1]) for line in lines)
    assert list((run / "tb").glob("events.*"))
    # the grid carries a caption line; training itself is the same as without the probe
    main([*args[:-4], "--name", "plain"])
    grid = sorted((run / "samples").glob("grid-*.png"))[-1]
    plain = sorted((tmp_path / "plain" / "samples").glob("grid-*.png"))[-1]
    assert Image.open(grid).height == Image.open(plain).height + 14
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / name)) for name in ("probed", "plain"))
    for key in a["G"]:
        assert torch.equal(a["G"][key], b["G"][key])


def test_a_bare_backbone_is_no_fidelity_classifier(tmp_path: Path) -> None:
    path = tmp_path / "backbone.safetensors"
    save_model(path, build_backbone("tiny", 1), image_size=32, training={})
    with pytest.raises(UserError, match="not a classifier"):
        main(["--data", "phantom", "--data-length", "16", "--resolution", "32", "--kimg", "0.016", "--device",
              "cpu", "--no-progress", "--runs-dir", str(tmp_path), "--fidelity-classifier", str(path)])
    assert not (tmp_path / "gan-phantom-32").exists()
