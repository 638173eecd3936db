"""``evaluate.synthetic``: the report's sections, memorisation, the feature cache and the command end to end."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datasets.findings import CHEXPERT
from datasets.label_tasks import label_task
from datasets.phantoms.dataset import PhantomDataset
from datasets.sample import IMAGE, LABEL, to_uint8
from datasets.synthetic_store.format import GeneratorRecord, StoreAttrs, StoreLayout
from datasets.synthetic_store.writer import BlockRows, SyntheticStoreWriter, write_pending_blocks
from evaluate.quality import features as features_module
from evaluate.quality.features import FeatureCache, FeatureExtractor
from evaluate.quality.image_sets import ImageSet, balanced_rows
from evaluate.quality.measurement import QualityConfig, training_source
from evaluate.quality.memorisation import memorisation, pixel_vectors
from evaluate.quality.sections import confusion_matrix, label_fidelity, reference_halves
from evaluate.synthetic import main

RES = 32
TRAINING_LENGTH = 200
PLANTED_ROW, PLANTED_FROM = 5, 3
TASK = label_task(1, "0s")
PTX = CHEXPERT.index("Pneumothorax")


def phantom_images(split: str, n: int, *, task: bool = True) -> ImageSet:
    dataset = PhantomDataset("phantom", split, TASK if task else None, RES, length=n, balanced=task)
    samples = dataset.__getitems__(list(range(n)))
    images = to_uint8(torch.stack([s[IMAGE] for s in samples]))
    return ImageSet(split, images, torch.tensor([int(s[LABEL]) for s in samples]))


def generator_training_images() -> ImageSet:
    """The images a generator trained with ``--data phantom --data-length 200`` at 32 px learned from."""
    return phantom_images("train", TRAINING_LENGTH, task=False)


def _block_rows(images: np.ndarray, labels: np.ndarray, conditions: np.ndarray, start: int, stop: int) -> BlockRows:
    """Rows ``[start, stop)`` of a store's split; the seeds are the row numbers."""
    return images[start:stop], labels[start:stop], conditions[start:stop], np.arange(start, stop)


def write_phantom_store(url: Path, *, plant: bool, complete: bool = True) -> None:
    """A v1-0s store of fresh phantoms (the test stream, classes alternating); ``plant`` copies a training image."""
    sizes = {"train": 48, "val": 8}
    attrs = StoreAttrs(
        version=1, setting="0s", classes=TASK.classes,
        counts={s: {c: n // 2 for c in TASK.classes} for s, n in sizes.items()},
        resolution=RES, c_dim=len(CHEXPERT.columns), condition_columns=CHEXPERT.columns,
        generator=GeneratorRecord(sha256="0" * 64, config={"resolution": RES}, trained_on_phantoms=True,
                                  training={"data": "phantom", "data_length": TRAINING_LENGTH}),
        seed=0, truncation=1.0,
    )
    writer = SyntheticStoreWriter.open(url, attrs=attrs, overwrite=False,
                                       layout=StoreLayout(chunk_images=8, block_size=16))
    for split, n in sizes.items():
        pool = phantom_images("test" if split == "train" else "valid", 2 * n)
        rows = np.concatenate([pool.of_class(c)[: n // 2].numpy() for c in (0, 1)])
        rows = rows.reshape(2, -1).T.reshape(-1)  # classes alternate as synth.generate writes them
        images, labels = pool.images[rows].numpy().copy(), pool.labels[rows].numpy()
        if plant and split == "train":
            images[PLANTED_ROW] = generator_training_images().images[PLANTED_FROM].numpy()
        conditions = np.zeros((n, len(CHEXPERT.columns)), np.float32)
        conditions[labels == 1, PTX] = 1.0
        write_pending_blocks(writer, split, partial(_block_rows, images, labels, conditions))
    if complete:
        writer.finish()


# ------------------------------------------------------------------ sections


def test_label_fidelity_of_a_classifier_right_by_construction() -> None:
    intended = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    exact = label_fidelity(intended, intended.clone(), ("a", "b", "c"), {"a": 1.0, "b": 1.0, "c": 1.0})
    assert exact["agreement"] == {"a": 1.0, "b": 1.0, "c": 1.0} and exact["mean"] == 1.0
    predicted = torch.tensor([0, 1, 1, 1, 0, 2, 2])
    mixed = label_fidelity(intended, predicted, ("a", "b", "c"), {})
    assert mixed["agreement"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 2 / 3})
    assert mixed["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert confusion_matrix(intended, predicted, 3).sum() == 7


def test_reference_halves_are_disjoint_and_as_large_as_the_synthetic_class() -> None:
    synthetic = torch.tensor([0] * 6 + [1] * 6)
    reference = torch.tensor([0] * 20 + [1] * 8)
    halves = reference_halves(synthetic, reference, 2, seed=0)
    for c, (s, a, b) in halves.items():
        assert len(s) == len(a) == len(b) == (6 if c == 0 else 4)
        assert not set(a) & set(b)
        assert (reference[a] == c).all() and (reference[b] == c).all() and (synthetic[s] == c).all()


def test_balanced_rows_take_up_to_per_class_of_every_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    rows = balanced_rows(labels, 3, 5, seed=1)
    assert np.bincount(labels[rows].numpy()).tolist() == [5, 3, 5]
    assert np.array_equal(rows, balanced_rows(labels, 3, 5, seed=1))


def test_memorisation_flags_a_planted_copy_and_nothing_in_fresh_phantoms() -> None:
    training = generator_training_images()
    fresh = phantom_images("test", 60)
    clean = memorisation(pixel_vectors(fresh.images), pixel_vectors(training.images))
    assert int(clean.flagged.sum()) == 0
    assert 0.5 < clean.ratio < 2.0  # fresh draws lie as far from the training images as these from each other
    planted = fresh.images.clone()
    planted[7] = training.images[11]
    result = memorisation(pixel_vectors(planted), pixel_vectors(training.images))
    assert torch.nonzero(result.flagged).flatten().tolist() == [7]
    assert int(result.nearest[7]) == 11 and float(result.distances[7]) == pytest.approx(0, abs=1e-5)


def test_training_source_follows_the_generators_provenance_and_balance_task() -> None:
    """A generator trained class-balanced over a task saw that task's members only; memorisation compares with them."""
    training = {"data": "phantom", "data_length": 300, "balance_task": "v3-Xs"}
    store = SimpleNamespace(attrs=SimpleNamespace(generator=GeneratorRecord(sha256="0" * 64, training=training)))
    name, options = training_source(store, QualityConfig())
    assert name == "phantom" and options == {"length": 300, "task": label_task(3, "Xs")}
    name, options = training_source(store, QualityConfig(training_data="phantom-nih"))
    assert name == "phantom-nih" and options == {}  # another data set: none of the provenance's options
    no_training = SimpleNamespace(attrs=SimpleNamespace(generator=GeneratorRecord(sha256="0" * 64)))
    assert training_source(no_training, QualityConfig()) is None


def test_feature_cache_computes_each_image_set_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = phantom_images("test", 8)
    extractor = FeatureExtractor("flatten", "test:flatten", RES, 1, torch.nn.Flatten())
    cache = FeatureCache(tmp_path, torch.device("cpu"), amp=False, progress=False)
    first = cache.features(extractor, images)
    assert first.shape == (8, RES * RES)

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("features were computed again")

    monkeypatch.setattr(features_module, "apply_network", refuse)
    assert torch.equal(cache.features(extractor, images), first)
    other = ImageSet("other", images.images.flip(0), images.labels)
    with pytest.raises(AssertionError):
        cache.features(extractor, other)  # other pixels, another key


def test_xrv_features_without_weights_on_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(features_module.XRV_CACHE_ENV, str(tmp_path))
    with pytest.raises(features_module.UserError, match="not on disk"):
        features_module.xrv_extractor()


# ------------------------------------------------------------------ the command

FAST = ["--backbone", "tiny", "--images", "48", "--train-images", "48", "--epochs", "1", "--lr", "1e-3",
        "--bootstrap", "5", "--k", "3", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quality") / "planted.zarr"
    write_phantom_store(path, plant=True)
    return path


def test_report_has_every_section_and_flags_the_planted_copy(
    planted_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, runs = tmp_path / "report", tmp_path / "runs"
    assert main([str(planted_store), "--reference", "phantom", "--out", str(out), "--runs-dir", str(runs), *FAST]) == 0
    figures = json.loads((out / "quality.json").read_text())
    for section in ("fidelity", "coverage", "label_fidelity", "usefulness", "memorisation", "class_balance",
                    "provenance", "features"):
        assert section in figures
    assert set(figures["fidelity"]) == {"all", *TASK.classes}
    assert figures["fidelity"]["all"]["fd"] >= 0 and figures["fidelity"]["all"]["floor"] >= 0
    assert set(figures["label_fidelity"]["agreement"]) == set(TASK.classes)
    assert figures["usefulness"]["ratio"] is not None
    pixels = figures["memorisation"]["spaces"]["pixels"]
    assert PLANTED_ROW in pixels["flagged_rows"] and pixels["flagged"] == 1
    closest = pixels["closest_pairs"][0]
    assert (closest["synthetic"], closest["training"]) == (PLANTED_ROW, PLANTED_FROM)
    assert closest["distance"] == pytest.approx(0.0, abs=1e-5)  # |a|^2 + |b|^2 - 2ab rounds, by thread count
    assert PLANTED_ROW in figures["memorisation"]["spaces"]["features"]["flagged_rows"]
    assert figures["provenance"]["generator_training"]["data"] == "phantom"
    for name in ("quality.md", "samples.png", "bars.png", "nearest.png"):
        assert (out / name).stat().st_size > 0
    text = (out / "quality.md").read_text()
    assert "## Label fidelity" in text and "## Memorisation" in text and "](nearest.png)" in text
    capsys.readouterr()
    # a second report against the same reference trains no classifier again
    assert main([str(planted_store), "--out", str(tmp_path / "again"), "--runs-dir", str(runs), *FAST]) == 0
    err = capsys.readouterr().err
    assert "reference classifier: reusing" in err and "synthetic classifier: reusing" in err
    again = json.loads((tmp_path / "again" / "quality.json").read_text())
    assert again["label_fidelity"] == figures["label_fidelity"] and again["fidelity"] == figures["fidelity"]


def test_fresh_phantom_store_flags_no_copy(tmp_path: Path) -> None:
    store = tmp_path / "fresh.zarr"
    write_phantom_store(store, plant=False)
    assert main([str(store), "--runs-dir", str(tmp_path / "runs"), *FAST, "--train-images", "64"]) == 0
    figures = json.loads((tmp_path / "fresh.zarr.quality" / "quality.json").read_text())
    assert figures["memorisation"]["spaces"]["pixels"]["flagged"] == 0
    # the store has 48 training images: train-on-real gets as many, the judge of label fidelity all 64
    assert figures["usefulness"]["train_images"] == {"real": 48, "synthetic": 48}
    assert figures["usefulness"]["real_classifier"] != str(Path(figures["label_fidelity"]["classifier"]).parent)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("incomplete", "is incomplete"),
        ("classes", "has the classes"),
        ("features", "does not exist"),
        ("reference root", "chexpert: no data root given; pass --reference-root or set CXR_CHEXPERT_ROOT"),
        ("out under a file", "cannot be written: "),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, message: str, planted_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from plumbing.cli import run_cli

    store, extra = planted_store, []
    out = tmp_path / "report"
    if case == "incomplete":
        store = tmp_path / "partial.zarr"
        write_phantom_store(store, plant=False, complete=False)
    elif case == "classes":
        extra = ["--reference", "siim-covid"]
    elif case == "reference root":
        monkeypatch.delenv("CXR_CHEXPERT_ROOT", raising=False)
        extra = ["--reference", "chexpert"]
    elif case == "out under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "report"
    else:
        extra = ["--features", str(tmp_path / "missing.safetensors")]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(store), "--out", str(out), "--runs-dir", str(tmp_path / "runs"), *FAST, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists() and not (tmp_path / "runs").exists()
