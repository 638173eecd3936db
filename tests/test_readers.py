"""The four real-data readers on tiny data sets in their published layouts, and image decoding."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.findings import CHEXPERT, NIH
from datasets.image_io import ImageDecodeError, MissingDecoderError, read_dicom, read_image
from datasets.label_tables import read_chexpert_table, read_nih_table
from datasets.label_tasks import assign_classes, label_task
from datasets.registry import build_dataset, get_spec, names
from datasets.tabular import stratified_holdout, subset_rows
from plumbing.cli import run_cli
from plumbing.errors import UserError
from tests import real_layouts as rl

RES = 32


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory):
    return rl.write_chexpert(tmp_path_factory.mktemp("chexpert"))


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory):
    return rl.write_nih(tmp_path_factory.mktemp("nih"))


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory):
    return rl.write_siim(tmp_path_factory.mktemp("siim"))


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
    return rl.write_isic(tmp_path_factory.mktemp("isic"))


def check_sample(sample: dict, channels: int) -> None:
    image = sample["image"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert image.shape == (channels, RES, RES)
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0 and image.std() > 0
    assert isinstance(sample["label"], int) and isinstance(sample["id"], str)


def same_vectors(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.nan_to_num(a, nan=9.0), np.nan_to_num(b, nan=9.0))


# --------------------------------------------------------------------------- CheXpert


def test_chexpert_reads_frontal_rows_with_their_findings(chexpert_root) -> None:
    data = build_dataset("chexpert", root=chexpert_root, resolution=RES)
    table = read_chexpert_table(chexpert_root / "train.csv")
    assert len(data) == 40 == len(table)  # the lateral row is dropped by the default views
    sample = data[3]
    check_sample(sample, 1)
    assert sample["id"] == table.ids[3] and sample["id"].startswith("CheXpert-v1.0-small/train/")
    assert sample["label"] == -1
    assert same_vectors(sample["findings"].numpy(), table.vectors[3])
    assert len(build_dataset("chexpert", root=chexpert_root, resolution=RES, views=None)) == 41
    assert len(build_dataset("chexpert", root=chexpert_root, split="valid", resolution=RES)) == 8


def test_chexpert_label_task_keeps_its_classes(chexpert_root) -> None:
    task = label_task(2, "Xs")
    data = build_dataset("chexpert", root=chexpert_root, task=task, resolution=RES)
    table = read_chexpert_table(chexpert_root / "train.csv")
    expected = assign_classes(table.vectors, CHEXPERT, task)
    assert np.array_equal(data.labels, expected[expected >= 0])
    assert set(np.unique(data.labels)) == {0, 1}
    assert data[0]["label"] == int(expected[expected >= 0][0])


def test_chexpert_paths_resolve_against_a_renamed_root(chexpert_root, tmp_path) -> None:
    renamed = tmp_path / "my-chexpert"
    shutil.copytree(chexpert_root, renamed)  # the CSV paths still start with CheXpert-v1.0-small/
    data = build_dataset("chexpert", root=renamed, resolution=RES, max_samples=3)
    assert str(data.records.paths[0]).startswith(str(renamed / "train"))
    check_sample(data[0], 1)


def test_chexpert_without_images_names_the_layout(chexpert_root, tmp_path) -> None:
    root = tmp_path / "csv-only"
    root.mkdir()
    shutil.copy(chexpert_root / "train.csv", root / "train.csv")
    with pytest.raises(UserError, match="not found.*--data-root or CXR_CHEXPERT_ROOT"):
        build_dataset("chexpert", root=root)


# --------------------------------------------------------------------------- ChestX-ray8


def test_nih_splits_follow_the_lists(nih_root) -> None:
    train = build_dataset("chestxray8", root=nih_root, resolution=RES)
    test = build_dataset("chestxray8", root=nih_root, split="test", resolution=RES)
    assert (len(train), len(test)) == (20, 10)
    assert not set(train.records.ids) & set(test.records.ids)
    assert len(build_dataset("chestxray8", root=nih_root, split="valid", resolution=RES)) == 10
    table = read_nih_table(nih_root / "Data_Entry_2017_v2020.csv")
    sample = test[2]
    check_sample(sample, 1)
    row = list(table.ids).index(sample["id"])
    assert np.array_equal(sample["findings"].numpy(), table.vectors[row])
    task = label_task(2, "Xs")
    labelled = build_dataset("chestxray8", root=nih_root, task=task, resolution=RES)
    expected = assign_classes(table.vectors[:20], NIH, task)
    assert np.array_equal(labelled.labels, expected[expected >= 0])


def test_nih_without_lists_reads_every_row(tmp_path) -> None:
    root = rl.write_nih(tmp_path, n_rows=12, lists=False)
    assert len(build_dataset("chestxray8", root=root, resolution=RES)) == 12
    assert len(build_dataset("chestxray8", root=root, split="test", resolution=RES)) == 12


def test_nih_reads_the_split_image_folders_of_the_download(tmp_path) -> None:
    root = rl.write_nih(tmp_path, n_rows=12, n_test=4)
    names = sorted(p.name for p in (root / "images").iterdir())
    for k, name in enumerate(names):
        target = root / f"images_{1 + k % 2:03d}" / "images"
        target.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).rename(target / name)
    (root / "images").rmdir()
    data = build_dataset("chestxray8", root=root, resolution=RES)
    assert len(data) == 8
    check_sample(data[7], 1)


# --------------------------------------------------------------------------- SIIM-COVID


def test_siim_images_take_their_study_class(siim_root) -> None:
    train = build_dataset("siim-covid", root=siim_root, resolution=RES)
    valid = build_dataset("siim-covid", root=siim_root, split="valid", resolution=RES)
    assert len(train) + len(valid) == 16
    assert get_spec("siim-covid").classes == rl.SIIM_CLASSES
    images = pd.read_csv(siim_root / "train_image_level.csv").set_index("id")["StudyInstanceUID"]
    studies = pd.read_csv(siim_root / "train_study_level.csv")
    study_class = dict(
        zip(studies["id"].str.removesuffix("_study"), studies[list(rl.SIIM_CLASSES)].to_numpy().argmax(1), strict=True)
    )
    for data in (train, valid):
        assert all(study_class[images[i]] == c for i, c in zip(data.records.ids, data.labels, strict=True))
    # Studies never straddle the split; round(0.2 * n) studies of each class are held out (1, 1, 1, 0).
    assert not {images[i] for i in train.records.ids} & {images[i] for i in valid.records.ids}
    assert len({images[i] for i in valid.records.ids}) == 3
    sample = train[0]
    check_sample(sample, 1)
    assert "findings" not in sample and sample["label"] == int(train.labels[0])


def test_siim_dicoms_decode_to_the_rendered_radiographs(siim_root) -> None:
    """MONOCHROME1 files (inverted values in the file) and windowed MONOCHROME2 files both come out as rendered."""
    expected = rl.siim_pixels()
    data = build_dataset("siim-covid", root=siim_root, resolution=RES, holdout=0.01)
    order = list(pd.read_csv(siim_root / "train_image_level.csv")["id"])
    photometric = set()
    for path, image_id in zip(data.records.paths, data.records.ids, strict=True):
        decoded = read_dicom(path)
        photometric.add(pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation)
        assert np.abs(decoded - expected[order.index(image_id)]).max() < 1e-3
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_siim_missing_dicom_is_named_or_skipped(siim_root, tmp_path) -> None:
    root = tmp_path / "siim"
    shutil.copytree(siim_root, root)
    victim = sorted((root / "train").rglob("*.dcm"))[0]
    victim.unlink()
    with pytest.raises(UserError, match=f"have no DICOM.*{victim.stem}.dcm"):
        build_dataset("siim-covid", root=root, split="train", holdout=0.01)
    data = build_dataset("siim-covid", root=root, split="train", holdout=0.01, on_error="skip")
    assert len(data) == 15


# --------------------------------------------------------------------------- ISIC 2019


def test_isic_rgb_images_and_stratified_split(isic_root) -> None:
    train = build_dataset("isic2019", root=isic_root, resolution=RES)
    valid = build_dataset("isic2019", root=isic_root, split="valid", resolution=RES)
    assert (len(train), len(valid)) == (32, 8)  # the UNK row is dropped
    assert not set(train.records.ids) & set(valid.records.ids)
    held = np.round(0.2 * np.array(rl.ISIC_COUNTS)).astype(int)
    assert np.array_equal(np.bincount(valid.labels, minlength=8), held)
    assert np.array_equal(np.bincount(train.labels, minlength=8), np.array(rl.ISIC_COUNTS) - held)
    sample = valid[0]
    check_sample(sample, 3)
    assert not torch.equal(sample["image"][0], sample["image"][2])  # colour, not repeated gray
    again = build_dataset("isic2019", root=isic_root, split="valid", resolution=RES)
    assert list(again.records.ids) == list(valid.records.ids)
    other = build_dataset("isic2019", root=isic_root, split="valid", resolution=RES, seed=1)
    assert list(other.records.ids) != list(valid.records.ids)


def test_stratified_holdout_reproduces_the_isic_split_sizes() -> None:
    counts = [4522, 12875, 3323, 867, 2624, 239, 253, 628]  # ISIC 2019 training images per class
    classes = np.repeat(np.arange(8), counts)
    held = stratified_holdout(classes, 0.2, seed=0)
    assert (int((~held).sum()), int(held.sum())) == (20264, 5067)


# --------------------------------------------------------------------------- options and batching


def test_max_samples_is_a_deterministic_subset(chexpert_root) -> None:
    full = build_dataset("chexpert", root=chexpert_root, resolution=RES)
    a = build_dataset("chexpert", root=chexpert_root, resolution=RES, max_samples=7)
    b = build_dataset("chexpert", root=chexpert_root, resolution=RES, max_samples=7)
    assert len(a) == 7 and list(a.records.ids) == list(b.records.ids)
    assert set(a.records.ids) <= set(full.records.ids)
    assert np.array_equal(subset_rows(10, None), np.arange(10))


def test_batches_collate(nih_root) -> None:
    data = build_dataset("chestxray8", root=nih_root, resolution=RES, augment=True)
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 1, RES, RES)
    assert batch["findings"].shape == (4, len(NIH.columns))
    assert batch["label"].tolist() == [-1] * 4 and len(batch["id"]) == 4


# --------------------------------------------------------------------------- errors


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    "name,env",
    [
        ("chexpert", "CXR_CHEXPERT_ROOT"),
        ("chestxray8", "CXR_NIH_ROOT"),
        ("siim-covid", "CXR_SIIM_ROOT"),
        ("isic2019", "CXR_ISIC_ROOT"),
    ],
)
def test_root_errors_name_the_flag_and_the_variable(name, env, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(UserError) as missing:
        build_dataset(name)
    assert "--data-root" in one_line(missing) and env in one_line(missing)
    with pytest.raises(UserError) as absent:
        build_dataset(name, root=tmp_path / "nowhere")
    assert "not a folder" in one_line(absent)
    with pytest.raises(UserError) as empty:  # a folder without the label files
        build_dataset(name, root=tmp_path)
    text = one_line(empty)
    assert "--data-root" in text and env in text and get_spec(name).layout in text


def test_root_from_the_environment(isic_root, monkeypatch) -> None:
    monkeypatch.setenv("CXR_ISIC_ROOT", str(isic_root))
    assert len(build_dataset("isic2019", split="valid")) == 8


def test_missing_columns_and_bad_names(chexpert_root, isic_root, tmp_path) -> None:
    root = tmp_path / "chexpert"
    shutil.copytree(chexpert_root, root)
    pd.read_csv(root / "train.csv").drop(columns=["Pneumothorax"]).to_csv(root / "train.csv", index=False)
    with pytest.raises(UserError) as exc:
        build_dataset("chexpert", root=root)
    assert "Pneumothorax" in one_line(exc) and "--data-root" in one_line(exc)
    isic = tmp_path / "isic"
    shutil.copytree(isic_root, isic)
    pd.read_csv(isic / rl.ISIC_GT).drop(columns=["VASC"]).to_csv(isic / rl.ISIC_GT, index=False)
    with pytest.raises(UserError, match="lacks the columns VASC"):
        build_dataset("isic2019", root=isic)
    with pytest.raises(UserError, match="unknown data set 'mimic'"):
        build_dataset("mimic", root=tmp_path)
    with pytest.raises(UserError, match="no split 'holdout'"):
        build_dataset("isic2019", root=isic_root, split="holdout")
    with pytest.raises(UserError, match="does not take the options views"):
        build_dataset("isic2019", root=isic_root, views=("PA",))
    with pytest.raises(UserError, match="label tasks"):
        build_dataset("isic2019", root=isic_root, task=label_task(1, "0s"))


ACCEPTED = {
    "chexpert": "views, max_samples, seed, on_error",
    "chestxray8": "views, max_samples, seed, on_error",
    "siim-covid": "max_samples, seed, on_error, holdout",
    "isic2019": "max_samples, seed, on_error, holdout",
    "phantom": "length, seed, shortcut, balanced",
    "phantom-nih": "length, seed, shortcut, balanced",
    "synthetic": "none",
    "folder": "max_samples, seed, on_error, holdout",
}


def test_every_registered_data_set_names_its_options() -> None:
    assert set(ACCEPTED) == set(names())


@pytest.mark.parametrize(
    ("name", "fixture"),
    [("chexpert", "chexpert_root"), ("chestxray8", "nih_root"), ("siim-covid", "siim_root"), ("isic2019", "isic_root")],
)
def test_the_spec_names_the_readers_held_out_split_and_groups(name, fixture, request) -> None:
    spec, root = get_spec(name), request.getfixturevalue(fixture)
    train = build_dataset(name, root=root, resolution=RES)
    held_out = build_dataset(name, root=root, split=spec.eval_split, resolution=RES)
    assert len(held_out) and not set(held_out.records.ids) & set(train.records.ids)
    assert (train.records.groups is not None) == (spec.groups is not None)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_unknown_option_is_one_line_naming_the_accepted_ones(name) -> None:
    with pytest.raises(UserError) as exc:
        build_dataset(name, foo=1)
    assert one_line(exc) == f"{name} does not take the options foo; accepted: {ACCEPTED[name]}"


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("chexpert", {"max_samples": 2.5}, "max_samples must be a whole number of at least 1, not 2.5"),
        ("chexpert", {"max_samples": -1}, "max_samples must be a whole number of at least 1, not -1"),
        ("chexpert", {"max_samples": True}, "max_samples must be a whole number"),
        ("chexpert", {"seed": -1}, "seed must be a whole number of at least 0"),
        ("chexpert", {"seed": "1"}, "seed must be a whole number"),
        ("chexpert", {"on_error": "ignore"}, "on_error must be one of raise, skip, not 'ignore'"),
        ("chexpert", {"views": ("XX",)}, "unknown view 'XX'; known views: PA, AP, LL, RL, L, UNKNOWN"),
        ("chexpert", {"views": 5}, "views must name at least one view, not 5"),
        ("chexpert", {"views": ()}, "views must name at least one view"),
        ("chestxray8", {"views": ["PA", 1]}, "unknown view 1"),
        ("chexpert", {"resolution": 0}, "resolution must be a positive number of pixels, not 0"),
        ("chexpert", {"resolution": 2.5}, "resolution must be a positive number of pixels"),
        ("chexpert", {"split": 1}, "split must be a split name"),
        ("chexpert", {"augment": "yes"}, "augment must be True or False"),
        ("chexpert", {"task": "v1-0s"}, "task must be a label task"),
        ("isic2019", {"holdout": "0.2"}, "holdout must be a number in between 0 and 1 (exclusive), not '0.2'"),
        ("siim-covid", {"holdout": 1.0}, "holdout must be a number in between 0 and 1"),
        ("isic2019", {"on_error": None}, "on_error must be one of raise, skip"),
        ("phantom", {"length": 0}, "length must be a whole number of at least 1, not 0"),
        ("phantom", {"length": 2.5}, "length must be a whole number"),
        ("phantom", {"seed": "x"}, "seed must be a whole number"),
        ("phantom", {"shortcut": "high"}, "shortcut must be a number in [0, 1], not 'high'"),
        ("phantom-nih", {"balanced": "yes"}, "balanced must be True or False, not 'yes'"),
        ("phantom", {"resolution": 0}, "resolution must be a positive number of pixels, not 0"),
    ],
)
def test_bad_option_values_are_one_line_user_errors(name, options, needle, request) -> None:
    roots = {"chexpert": "chexpert_root", "chestxray8": "nih_root", "siim-covid": "siim_root", "isic2019": "isic_root"}
    root = request.getfixturevalue(roots[name]) if name in roots else None
    with pytest.raises(UserError) as exc:
        build_dataset(name, root=root, **{"resolution": RES, **options})
    text = one_line(exc)
    assert text.startswith(f"{name}") and needle in text


def test_a_single_view_string_is_one_view(chexpert_root) -> None:
    pa = build_dataset("chexpert", root=chexpert_root, resolution=RES, views=("PA",))
    assert 0 < len(pa) < 40
    assert list(build_dataset("chexpert", root=chexpert_root, resolution=RES, views="PA").records.ids) == list(
        pa.records.ids
    )
    assert len(read_chexpert_table(chexpert_root / "train.csv", views="PA")) == len(pa)
    with pytest.raises(UserError, match="unknown view 'XX'"):
        read_nih_table(views="XX")


def test_phantoms_refuse_a_data_root(tmp_path) -> None:
    with pytest.raises(UserError) as exc:
        build_dataset("phantom", root=tmp_path, resolution=32, length=2)
    assert "phantom needs no files" in one_line(exc) and str(tmp_path) in one_line(exc)


@pytest.mark.parametrize(("name", "fixture", "csv"), [
    ("isic2019", "isic_root", rl.ISIC_GT),
    ("siim-covid", "siim_root", "train_study_level.csv"),
])  # fmt: skip
def test_non_numeric_one_hot_value_names_its_column(name, fixture, csv, request, tmp_path) -> None:
    root = tmp_path / name
    shutil.copytree(request.getfixturevalue(fixture), root)
    frame = pd.read_csv(root / csv)
    column = frame.columns[3]
    frame[column] = frame[column].astype(object)
    frame.loc[2, column] = "yes"
    frame.to_csv(root / csv, index=False)
    with pytest.raises(UserError) as exc:
        build_dataset(name, root=root, resolution=RES)
    text = one_line(exc)
    assert f"column {column} holds 'yes'; expected one-hot values 0 or 1" in text and "--data-root" in text


def test_corrupt_image_in_a_data_loader_worker_is_one_line(tmp_path, capsys) -> None:
    root = rl.write_nih(tmp_path, n_rows=6, n_test=2)
    data = build_dataset("chestxray8", root=root, resolution=RES)
    bad = rl.truncate(data.records.paths[1])

    def main(argv=None) -> int:
        for _ in DataLoader(data, batch_size=2, num_workers=1):
            pass
        return 0

    with pytest.raises(SystemExit) as done:
        run_cli(main, [])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("python -m tests.test_readers: error: image file ") and str(bad) in err


def test_corrupt_image_raises_by_default_and_can_be_skipped(tmp_path) -> None:
    root = rl.write_nih(tmp_path, n_rows=12, n_test=4)
    data = build_dataset("chestxray8", root=root, resolution=RES)
    bad = data.records.paths[2]
    rl.truncate(bad)
    with pytest.raises(ImageDecodeError) as exc:
        data[2]
    assert str(bad) in one_line(exc)
    skipping = build_dataset("chestxray8", root=root, resolution=RES, on_error="skip")
    sample = skipping[2]
    assert sample["id"] == str(skipping.records.ids[3])  # the next readable sample
    assert skipping.skipped == {str(bad)}
    check_sample(sample, 1)
    for path in skipping.records.paths:
        rl.truncate(path)
    with pytest.raises(UserError, match="none of the 8 images"):
        skipping[0]


# --------------------------------------------------------------------------- image decoding


def test_dicom_monochrome1_is_inverted(tmp_path) -> None:
    stored = rl.two_tone(high=3000, low=1000)  # left half bright in the stored values
    m2 = read_dicom(rl.write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2"))
    m1 = read_dicom(rl.write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1"))
    assert m2.dtype == np.float32 and m2.shape == stored.shape
    assert m2[0, 0] == pytest.approx(3000 / 4095) and m2[0, -1] == pytest.approx(1000 / 4095)  # 12 bits stored
    assert m1[0, 0] < 0.3 < 0.7 < m1[0, -1]  # the bright-in-file half comes out dark
    assert np.allclose(m1, 1.0 - m2)


def test_dicom_voi_window(tmp_path) -> None:
    stored = np.array([[500, 1500, 2000, 2499, 3500]], dtype=np.uint16).repeat(4, axis=0)
    plain = read_dicom(rl.write_dicom(tmp_path / "plain.dcm", stored))
    windowed = read_dicom(rl.write_dicom(tmp_path / "win.dcm", stored, window=(2000.0, 1000.0)))
    assert np.allclose(plain[0], stored[0] / 4095)
    # LINEAR window [1500, 2500): below -> 0, above -> 1, centre -> 0.5; the full [0, 1] is used.
    assert windowed[0, 0] == 0.0 and windowed[0, 4] == 1.0
    assert windowed[0, 2] == pytest.approx(0.5, abs=1e-3)
    assert windowed[0, 3] > 0.99 and windowed[0, 1] < 0.01


def test_dicom_lookup_table_equals_the_direct_computation(tmp_path, monkeypatch) -> None:
    import datasets.image_io as image_io

    stored = rl.gradient_image(4).astype(np.uint16) * 16
    files = [
        rl.write_dicom(tmp_path / "a.dcm", stored, "MONOCHROME1", window=(1800.0, 1200.0)),
        rl.write_dicom(tmp_path / "b.dcm", stored, "MONOCHROME2"),
    ]
    table = [read_dicom(f) for f in files]
    monkeypatch.setattr(image_io, "_PROBE_LIMIT_BITS", 0)  # only the two extremes: the direct path
    direct = [read_dicom(f) for f in files]
    for a, b in zip(table, direct, strict=True):
        assert a.dtype == b.dtype == np.float32 and np.allclose(a, b, atol=1e-6)


def test_dicom_voi_lut_sequence_uses_the_lut_range(tmp_path) -> None:
    stored = np.array([[0, 1000, 1127, 2000, 4095]], dtype=np.uint16).repeat(3, axis=0)
    lut = np.linspace(0, 4000, 256).astype(np.uint16)  # entries for stored 1000 .. 1255, reaching 4000 of 65535
    x = read_dicom(rl.write_dicom(tmp_path / "lut.dcm", stored, voi_lut=(1000, lut)))
    assert x[0, 0] == 0.0 and x[0, 1] == 0.0 and x[0, 3] == 1.0 and x[0, 4] == 1.0
    assert x[0, 2] == pytest.approx(lut[127] / 4000.0, abs=1e-6)  # scaled by the LUT's actual range


def test_compressed_dicom_without_decoder_is_named(siim_root, tmp_path) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed")
    path = rl.write_dicom(
        tmp_path / "jll.dcm",
        rl.two_tone(1, 0),
        transfer_syntax=JPEGLosslessSV1,
        pixel_bytes=b"\xff\xd8\xff\xc3" + bytes(64),
    )
    with pytest.raises(MissingDecoderError) as exc:
        read_image(path)
    assert "JPEG Lossless" in one_line(exc) and "pylibjpeg" in one_line(exc) and "python-gdcm" in one_line(exc)
    # A missing decoder concerns the installation, not one file: never skipped.
    root = tmp_path / "siim"
    shutil.copytree(siim_root, root)
    data = build_dataset("siim-covid", root=root, resolution=RES, on_error="skip")
    shutil.copy(path, data.records.paths[1])
    with pytest.raises(MissingDecoderError):
        data[1]


def test_png_and_jpeg_decoding(tmp_path) -> None:
    wide = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w16.png")
    x = read_image(tmp_path / "w16.png")
    assert x.shape == (1, 20, 30) and np.allclose(x[0], wide / 65535.0)
    rgb = rl.gradient_image(3, channels=3)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.allclose(read_image(tmp_path / "c.png", channels=3), np.moveaxis(rgb, -1, 0) / 255.0)
    gray = read_image(tmp_path / "c.png", channels=1)
    assert gray.shape == (1, 40, 48) and np.allclose(gray[0], np.asarray(Image.fromarray(rgb).convert("L")) / 255.0)
    with pytest.raises(ImageDecodeError, match="does not exist"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="text.jpg could not be decoded"):
        read_image(tmp_path / "text.jpg")
