"""adapt.outputs: a network's logits, head features and labels over a data set, in data-set order."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from adapt.config import AdaptConfig
from adapt.model import SourceNetwork, build_model
from adapt.outputs import collect_outputs


class _Images(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, 32, 32, generator=g)
        self.labels = torch.where(torch.arange(n) == 3, -1, torch.arange(n) % 2)  # image 3 unlabelled

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


def test_outputs_match_the_two_networks_in_data_set_order(tmp_path) -> None:
    cfg = AdaptConfig(alignment="ours", backbone="resnet18", init="scratch", image_size=32)
    model, _ = build_model(cfg, 1, 2, tmp_path)
    model.eval()
    with torch.no_grad():  # make the source branches differ from the target ones
        for name, parameter in model.named_parameters():
            if "source_fc1" in name:
                parameter.add_(torch.randn_like(parameter))
    data = _Images(7)
    kwargs = {"batch_size": 3, "workers": 0, "device": torch.device("cpu"), "amp": False}
    target = collect_outputs(model, data, **kwargs)
    source = collect_outputs(model, data, source_branch=True, **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(target.logits, model(data.images))
        torch.testing.assert_close(target.features, model.corrected(model.backbone(data.images))[0])
        torch.testing.assert_close(source.logits, SourceNetwork(model, True)(data.images))
    assert not torch.allclose(target.logits, source.logits)
    assert target.labels.tolist() == data.labels.tolist() and not target.labelled
    assert target.features.shape == (7, 512) and target.probabilities.sum(dim=1).allclose(torch.ones(7).double())
