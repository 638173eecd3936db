"""The DCAN network (adapt.model): domain-conditioned attention branches, initialisation, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapt.config import AdaptConfig, with_preset
from adapt.model import DomainChannelAttention, build_model, domain_modules, export_classifier, source_rows
from models.backbones import ChannelAttention, residual_blocks
from models.model_file import load_classifier, read_model_info


def _model(alignment: str = "dcan", backbone: str = "resnet18", init: str = "scratch") -> torch.nn.Module:
    cfg = with_preset(AdaptConfig(backbone=backbone, init=init, image_size=32), alignment)
    model, _ = build_model(cfg, 1, 2, Path("."))
    return model.eval()


@pytest.mark.parametrize(("backbone", "blocks"), [("resnet18", 8), ("resnet50", 16)])
def test_every_residual_block_has_a_domain_attention_module(backbone: str, blocks: int) -> None:
    model = _model(backbone=backbone)
    modules = domain_modules(model)
    assert len(modules) == len(residual_blocks(model.backbone.body)) == blocks
    for m in modules:  # the source branch starts as a copy of the target branch
        torch.testing.assert_close(m.source_fc1.weight, m.fc1.weight, rtol=0, atol=0)
        assert m.fc1.out_features == m.fc1.in_features // 16


def test_source_rows_go_through_the_source_branch_and_the_rest_through_the_target_branch() -> None:
    module = DomainChannelAttention(32)
    with torch.no_grad():
        module.source_fc1.weight.add_(torch.randn_like(module.source_fc1.weight))
    x = torch.randn(6, 32, 4, 4)
    target_only = ChannelAttention(32)
    target_only.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("source_fc1")})
    source_only = ChannelAttention(32)
    source_only.fc1.load_state_dict(module.source_fc1.state_dict())
    source_only.fc2.load_state_dict(module.fc2.state_dict())
    module.source_rows = 2
    mixed = module(x)
    torch.testing.assert_close(mixed[:2], source_only(x[:2]))
    torch.testing.assert_close(mixed[2:], target_only(x[2:]))
    module.source_rows = 0  # evaluation: every image through the target branch
    torch.testing.assert_close(module(x), target_only(x))


def test_source_rows_reach_every_module_only_inside_the_block() -> None:
    model = _model()
    with source_rows(model, 3):
        assert all(m.source_rows == 3 for m in domain_modules(model))
    assert all(m.source_rows == 0 for m in domain_modules(model))


def test_presets_build_their_parts_and_the_official_initialisation() -> None:
    plain = _model("none")
    assert not domain_modules(plain) and not plain.correction
    model = _model("dcan")
    assert model.correction
    assert float(model.head.bias.detach().abs().max()) == 0.0 and 0.005 < float(model.head.weight.detach().std()) < 0.02
    for layer in (model.feature_correction.fc1, model.output_correction.fc2):
        assert torch.all(layer.bias == 0.1) and float(layer.weight.detach().std()) < 0.01


def test_frozen_batchnorm_has_no_trainable_parameters() -> None:
    cfg = with_preset(AdaptConfig(backbone="resnet18", init="scratch", batchnorm="frozen"), "dcan")
    model, _ = build_model(cfg, 1, 2, Path("."))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(p.requires_grad for m in norms for p in m.parameters())
    assert not AdaptConfig(init="scratch").frozen_batchnorm and AdaptConfig(init="imagenet").frozen_batchnorm


def test_exported_classifier_is_the_evaluation_network(tmp_path: Path) -> None:
    cfg = with_preset(AdaptConfig(backbone="resnet18", init="scratch", image_size=32), "dcan")
    model, _ = build_model(cfg, 1, 2, tmp_path)
    with torch.no_grad():
        for m in domain_modules(model):
            m.source_fc1.weight.mul_(3)  # the export must not depend on the source branch
    model.eval()
    export_classifier(tmp_path / "c.safetensors", model, cfg, ("a", "b"), {"trained_by": "test"})
    info = read_model_info(tmp_path / "c.safetensors")
    assert info.attention and info.correction and info.classes == ("a", "b")
    loaded, _ = load_classifier(tmp_path / "c.safetensors")
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_attention_on_pretrained_blocks_starts_as_nearly_the_identity(tmp_path: Path) -> None:
    from models.backbones import build_backbone
    from models.model_file import save_model

    save_model(tmp_path / "b.safetensors", build_backbone("resnet18", 1), image_size=32, training={"trained_by": "t"})
    cfg = with_preset(AdaptConfig(backbone="resnet18", init=str(tmp_path / "b.safetensors")), "dcan")
    model, provenance = build_model(cfg, 1, 2, tmp_path)
    assert provenance["file"] == str(tmp_path / "b.safetensors")
    x = torch.randn(2, 64, 4, 4)
    module = model.backbone.body.layer1[0].bn2.attention
    with torch.no_grad():
        ratio = module(x) / x
    assert float(ratio.min()) > 0.97 and float(ratio.max()) < 0.99
