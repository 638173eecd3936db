"""The backbone registry (models.backbones) and the model file format (models.model_file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from models.backbones import BACKBONES, ChannelAttention, Classifier, backbone_names, build_backbone, get_backbone_spec
from models.initialisation import imagenet_weights_file, initialise
from models.model_file import (
    BACKBONE_FILE,
    CLASSIFIER_FILE,
    load_backbone_weights,
    load_classifier,
    read_model_info,
    save_model,
)
from plumbing.errors import UserError
from plumbing.files import sha256_file

TRAINING = {"trained_by": "tests", "data": "random", "command": "pytest"}


def _one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub cache under TORCH_HOME; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir elsewhere would override TORCH_HOME
    return tmp_path / "torch" / "hub" / "checkpoints"


def _randomise(module: nn.Module, seed: int) -> None:
    """Give every floating tensor (running statistics too) distinct random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_backbone_builds(name: str, channels: int) -> None:
    spec = get_backbone_spec(name)
    backbone = build_backbone(name, channels).eval()
    assert (backbone.arch, backbone.channels, backbone.feature_dim) == (name, channels, spec.feature_dim)
    x = torch.randn(1, channels, 64, 64)
    with torch.no_grad():
        maps = backbone.forward_features(x)
        features = backbone(x)
    assert maps.shape[:2] == (1, spec.feature_dim) and maps.dim() == 4
    assert features.shape == (1, spec.feature_dim)
    torch.testing.assert_close(features, maps.mean(dim=(2, 3)))
    classifier = Classifier(backbone, 4).eval()
    assert classifier.cam_layer == spec.cam_layer and classifier.cam_layer.startswith("backbone.body.")
    modules = dict(classifier.named_modules())
    assert classifier.cam_layer in modules and isinstance(modules["head"], nn.Linear)
    # Grad-CAM reads its layer's output after the forward pass: the layer runs once and nothing overwrites it
    seen: list[tuple[torch.Tensor, int]] = []

    def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        seen.append((out, out._version))

    modules[classifier.cam_layer].register_forward_hook(hook)
    with torch.no_grad():
        assert classifier(x).shape == (1, 4)
    assert len(seen) == 1 and seen[0][0]._version == seen[0][1]


def test_unknown_backbone_and_bad_channels() -> None:
    assert backbone_names() == ["densenet121", "resnet18", "resnet34", "resnet50", "tiny"]
    with pytest.raises(UserError) as exc:
        build_backbone("vit", 1)
    assert "resnet18" in _one_line(exc) and "tiny" in str(exc.value)
    with pytest.raises(UserError) as exc:
        get_backbone_spec("nope")
    assert "densenet121" in _one_line(exc)
    with pytest.raises(UserError, match="channels"):
        build_backbone("tiny", 2)


def test_backbone_file_round_trip(tmp_path: Path) -> None:
    backbone = build_backbone("tiny", 1)
    _randomise(backbone, 0)
    path = tmp_path / "run" / BACKBONE_FILE
    save_model(path, backbone.to(memory_format=torch.channels_last), image_size=64, training=TRAINING)
    info = read_model_info(path)
    assert (info.path, info.architecture, info.channels, info.image_size, info.feature_dim) == (path, "tiny", 1, 64, 64)
    assert info.classes is None and info.training == TRAINING and info.sha256 == sha256_file(path)
    fresh = build_backbone("tiny", 1)
    assert load_backbone_weights(fresh, path) == info
    expected = backbone.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with pytest.raises(UserError, match="not a classifier"):
        load_classifier(path)


def test_save_unwraps_data_parallel(tmp_path: Path) -> None:
    backbone = build_backbone("tiny", 3)
    _randomise(backbone, 1)
    path = tmp_path / BACKBONE_FILE
    save_model(path, nn.DataParallel(backbone), image_size=32, training=TRAINING)
    fresh = build_backbone("tiny", 3)
    load_backbone_weights(fresh, path)
    assert torch.equal(fresh.body.stage1[0].weight, backbone.body.stage1[0].weight)


def test_classifier_round_trip(tmp_path: Path) -> None:
    classifier = Classifier(build_backbone("tiny", 3), 3)
    _randomise(classifier, 2)
    classifier.eval()
    path = tmp_path / CLASSIFIER_FILE
    classes = ("MEL", "NV", "BCC")
    save_model(path, classifier.backbone, image_size=64, training=TRAINING, head=classifier.head, classes=classes)
    loaded, info = load_classifier(path)
    assert info.classes == classes and not loaded.training
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), classifier(x))
    # a classifier file initialises a backbone too
    backbone = build_backbone("tiny", 3)
    assert load_backbone_weights(backbone, path).classes == classes
    assert torch.equal(backbone.body.stage3[0].weight, classifier.backbone.body.stage3[0].weight)


def test_other_architecture_or_channels_refused(tmp_path: Path) -> None:
    path = tmp_path / BACKBONE_FILE
    save_model(path, build_backbone("resnet18", 1), image_size=224, training=TRAINING)
    with pytest.raises(UserError) as exc:
        load_backbone_weights(build_backbone("tiny", 1), path)
    assert _one_line(exc) == f"{path} holds a resnet18 backbone, not tiny"
    with pytest.raises(UserError) as exc:
        load_backbone_weights(build_backbone("resnet18", 3), path)
    assert "1-channel" in _one_line(exc) and "3-channel" in str(exc.value) and str(path) in str(exc.value)


def test_tensors_that_do_not_fit_refused(tmp_path: Path) -> None:
    state = {f"backbone.{k}": v for k, v in build_backbone("tiny", 1).state_dict().items()}
    state["backbone.body.stage1.0.weight"] = torch.zeros(8, 1, 3, 3)
    del state["backbone.body.stage3.1.bias"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata={"cxr-model": json.dumps(_meta("tiny", 1, 64))})
    with pytest.raises(UserError) as exc:
        load_backbone_weights(build_backbone("tiny", 1), broken)
    text = _one_line(exc)
    assert str(broken) in text and "stage3.1.bias" in text and "stage1.0.weight" in text


def _meta(arch: str, channels: int, feature_dim: int, **extra: object) -> dict[str, object]:
    return {"format": "cxr-model", "version": 1, "architecture": arch, "channels": channels, "image_size": 64,
            "feature_dim": feature_dim, "classes": None, "training": {}} | extra  # fmt: skip


def test_not_a_model_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not tensors")
    missing = tmp_path / "missing.safetensors"
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"other": "x"})
    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.zeros(2)}, str(newer), metadata={"cxr-model": json.dumps(_meta("tiny", 1, 64, version=2))})
    bad_arch = tmp_path / "arch.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_arch), metadata={"cxr-model": json.dumps(_meta("vgg", 1, 64))})
    for path, words in (
        (text, "not safetensors"),
        (missing, "does not exist"),
        (foreign, 'no "cxr-model" metadata'),
        (newer, "version 2"),
        (bad_arch, "'vgg'"),
    ):
        with pytest.raises(UserError) as exc:
            read_model_info(path)
        assert str(path) in _one_line(exc) and words in str(exc.value)
        with pytest.raises(UserError):
            load_backbone_weights(build_backbone("tiny", 1), path)


def _fake_imagenet(checkpoints: Path, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision-format ImageNet file of random weights where torch.hub's cache would hold it."""
    net = getattr(torchvision.models, name)(weights=None)
    _randomise(net, 4)
    state = net.state_dict()
    path = imagenet_weights_file(name)
    assert path.parent == checkpoints
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


def test_imagenet_missing_file(hub: Path, tmp_path: Path) -> None:
    path = imagenet_weights_file("resnet18")
    assert path == hub / "resnet18-f37072fd.pth"
    with pytest.raises(UserError) as exc:
        initialise(build_backbone("resnet18", 1), "imagenet", tmp_path)
    text = _one_line(exc)
    assert str(hub) in text and "resnet18-f37072fd.pth" in text and "https://download.pytorch.org/" in text
    with pytest.raises(UserError, match="tiny has no ImageNet weights; use --init scratch"):
        initialise(build_backbone("tiny", 1), "imagenet", tmp_path)


@pytest.mark.parametrize("channels", [1, 3])
def test_imagenet_resnet(hub: Path, tmp_path: Path, channels: int) -> None:
    path, state = _fake_imagenet(hub, "resnet18")
    backbone = build_backbone("resnet18", channels)
    provenance = initialise(backbone, "imagenet", tmp_path)
    assert provenance == {
        "init": "imagenet", "file": str(path), "sha256": sha256_file(path),
        "trained_by": "ResNet18_Weights.IMAGENET1K_V1", "training": None,
    }  # fmt: skip
    json.dumps(provenance)
    stem = state["conv1.weight"] if channels == 3 else state["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(backbone.body.conv1.weight, stem)
    assert torch.equal(backbone.body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_imagenet_densenet_old_key_names(hub: Path, tmp_path: Path) -> None:
    """torchvision's DenseNet file names ``norm1`` as ``norm.1``; both load."""
    path, state = _fake_imagenet(hub, "densenet121")
    old = {  # as in the real file: no BatchNorm counters
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, path)
    backbone = build_backbone("densenet121", 1)
    initialise(backbone, "imagenet", tmp_path)
    features = backbone.body.features
    assert torch.equal(features.conv0.weight, state["features.conv0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(features.denseblock4.denselayer16.norm1.weight, state[
        "features.denseblock4.denselayer16.norm1.weight"])  # fmt: skip


def test_imagenet_file_that_does_not_fit(hub: Path, tmp_path: Path) -> None:
    path = imagenet_weights_file("resnet18")
    hub.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(64, 3, 5, 5), "layer5.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError) as exc:
        initialise(build_backbone("resnet18", 3), "imagenet", tmp_path)
    text = _one_line(exc)
    assert str(path) in text and "missing bn1.weight" in text and "unexpected layer5.weight" in text
    assert "wrong shape conv1.weight (64, 3, 5, 5) for (64, 3, 7, 7)" in text
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as exc:
        initialise(build_backbone("resnet18", 3), "imagenet", tmp_path)
    assert str(path) in _one_line(exc)


def test_initialise_ssl_run_and_path(tmp_path: Path) -> None:
    trained = build_backbone("tiny", 1)
    _randomise(trained, 5)
    runs = tmp_path / "runs"
    training = TRAINING | {"trained_by": "python -m ssl.curriculum"}
    save_model(runs / "simclr-1" / BACKBONE_FILE, trained, image_size=64, training=training)

    backbone = build_backbone("tiny", 1)
    provenance = initialise(backbone, "ssl:simclr-1", runs)
    file = runs / "simclr-1" / BACKBONE_FILE
    assert provenance == {
        "init": "ssl:simclr-1", "file": str(file), "sha256": sha256_file(file),
        "trained_by": "python -m ssl.curriculum", "training": training,
    }  # fmt: skip
    assert torch.equal(backbone.body.stage2[1].running_mean, trained.body.stage2[1].running_mean)

    (runs / "unfinished").mkdir()
    for init in ("ssl:unfinished", "ssl:absent", "ssl:"):
        with pytest.raises(UserError) as exc:
            initialise(build_backbone("tiny", 1), init, runs)
        assert _one_line(exc).startswith(f"{init}: no {BACKBONE_FILE} in {runs}") and "has not finished" in str(
            exc.value
        )

    by_path = build_backbone("tiny", 1)
    provenance = initialise(by_path, str(file), tmp_path / "elsewhere")
    assert provenance["init"] == str(file) and provenance["sha256"] == sha256_file(file)
    assert torch.equal(by_path.body.stage1[0].weight, trained.body.stage1[0].weight)
    with pytest.raises(UserError) as exc:
        initialise(build_backbone("tiny", 1), str(tmp_path / "nope.safetensors"), runs)
    assert "nope.safetensors" in _one_line(exc)


def test_initialise_scratch_keeps_weights(tmp_path: Path) -> None:
    backbone = build_backbone("tiny", 3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    assert initialise(backbone, "scratch", tmp_path) == {
        "init": "scratch", "file": None, "sha256": None, "trained_by": None, "training": None
    }  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_channel_attention_sits_before_every_residual_addition_and_needs_residual_blocks() -> None:
    backbone = build_backbone("resnet18", 1, attention=True)
    blocks = [m for m in backbone.modules() if isinstance(m, torchvision.models.resnet.BasicBlock)]
    assert len(blocks) == 8 and all(isinstance(b.bn2.attention, ChannelAttention) for b in blocks)
    assert backbone(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(UserError, match="no residual blocks"):
        build_backbone("tiny", 1, attention=True)


def test_plain_weights_load_into_an_attention_backbone_and_not_the_other_way(tmp_path: Path) -> None:
    plain = build_backbone("resnet18", 1)
    save_model(tmp_path / "plain.safetensors", plain, image_size=32, training=TRAINING)
    attended = build_backbone("resnet18", 1, attention=True)
    before = attended.body.layer1[0].bn2.attention.fc1.weight.detach().clone()
    load_backbone_weights(attended, tmp_path / "plain.safetensors")
    torch.testing.assert_close(attended.body.layer1[0].bn2.norm.weight, plain.body.layer1[0].bn2.weight)
    torch.testing.assert_close(attended.body.layer1[0].bn2.attention.fc1.weight, before)  # kept at init
    save_model(tmp_path / "attended.safetensors", attended, image_size=32, training=TRAINING)
    assert read_model_info(tmp_path / "attended.safetensors").attention
    with pytest.raises(UserError, match="channel attention"):
        load_backbone_weights(build_backbone("resnet18", 1), tmp_path / "attended.safetensors")


def test_a_classifier_with_attention_and_corrections_round_trips(tmp_path: Path) -> None:
    classifier = Classifier(build_backbone("resnet18", 1, attention=True), 3, correction=True).eval()
    with torch.no_grad():
        for p in classifier.output_correction.parameters():
            p.normal_()
    save_model(tmp_path / CLASSIFIER_FILE, classifier.backbone, image_size=32, training=TRAINING,
               head=classifier.head, classes=["a", "b", "c"],
               correction={"feature_correction": classifier.feature_correction,
                           "output_correction": classifier.output_correction})
    loaded, info = load_classifier(tmp_path / CLASSIFIER_FILE)
    assert info.attention and info.correction
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        f = classifier.backbone(x)
        f_hat = f + classifier.feature_correction(f)
        z = classifier.head(f_hat)
        torch.testing.assert_close(loaded(x), z + classifier.output_correction(z))
