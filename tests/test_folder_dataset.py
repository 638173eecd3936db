"""The ``folder`` data set: one's own PNG, JPEG and DICOM files, labels from an optional labels.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adapt.train import main as adapt_main
from datasets.findings import CHEXPERT
from datasets.label_tasks import label_task
from datasets.registry import build_dataset, get_spec
from datasets.tabular import NoLabelsError
from evaluate.finetune import main as finetune
from evaluate.protocol.task_data import DataChoice, task_data
from plumbing.cli import run_cli
from plumbing.errors import UserError
from ssl.data import parse_data, unlabelled_images
from synth.config import TrainingConfig
from synth.trainer import training_dataset
from tests.real_layouts import truncate, two_tone, write_dicom
from tests.test_synthetic_store import write_store

RES = 32
V1 = label_task(1, "0s")
GRAY8, GRAY16, GRAY_JPEG = 128, 30000, 100
HIGH, LOW = 3000, 1000  # 12 bits stored


def write_images(root: Path, n: int = 10) -> list[str]:
    """``n`` images in nested subfolders, cycling 8-bit PNG, 16-bit PNG, JPEG, MONOCHROME1 and MONOCHROME2 DICOM
    (the DICOMs two-toned, a window on every other MONOCHROME2); their relative paths, sorted."""
    paths = []
    for i in range(n):
        kind = i % 5
        folder = root / f"site{i % 2}" / ("deep/er" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"img{i:02d}" + (".png", ".PNG", ".jpg", ".dcm", ".dcm")[kind]
        if kind == 0:
            Image.fromarray(np.full((20, 24), GRAY8, dtype=np.uint8)).save(folder / name)
        elif kind == 1:
            Image.fromarray(np.full((20, 24), GRAY16, dtype=np.uint16)).save(folder / name)
        elif kind == 2:
            Image.fromarray(np.full((20, 24), GRAY_JPEG, dtype=np.uint8)).save(folder / name, quality=95)
        else:
            write_dicom(folder / name, two_tone(HIGH, LOW, 20, 24), "MONOCHROME1" if kind == 3 else "MONOCHROME2")
        paths.append((folder / name).relative_to(root).as_posix())
    (root / "notes.txt").write_text("not an image\n")
    return sorted(paths)


def write_labels(root: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def one_error(call, match: str) -> str:
    with pytest.raises(UserError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message
    assert match in message, message
    return message


def build(root: Path, split: str = "train", task=None, **options):
    return build_dataset("folder", root=root, split=split, task=task, resolution=RES, **options)


def test_every_image_in_path_order_decodes_to_the_unit_interval(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 10)
    data = build(tmp_path, task=V1)  # without labels.csv a task keeps every image, unlabelled
    assert [str(i) for i in data.records.ids] == paths and len(data) == 10
    assert paths[0].startswith("site0/deep/er/")
    samples = {s["id"]: s for s in (data[i] for i in range(len(data)))}
    for sample in samples.values():
        assert sample["label"] == -1 and "findings" not in sample
        assert sample["image"].shape == (1, RES, RES)
        assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    image = {Path(k).name: s["image"] for k, s in samples.items()}
    assert torch.allclose(image["img00.png"], torch.tensor(GRAY8 / 255))
    assert torch.allclose(image["img01.PNG"], torch.tensor(GRAY16 / 65535))
    assert torch.allclose(image["img02.jpg"], torch.tensor(GRAY_JPEG / 255), atol=0.02)
    # MONOCHROME1 holds the same stored values as MONOCHROME2 but shows them inverted.
    assert torch.allclose(image["img03.dcm"] + image["img04.dcm"], torch.tensor(1.0), atol=1e-5)
    assert float(image["img04.dcm"][0, :, 0].mean()) > float(image["img04.dcm"][0, :, -1].mean())
    assert len(build(tmp_path, max_samples=4)) == 4
    one_error(lambda: build(tmp_path, "test", task=V1), "has no labels (no labels.csv)")
    assert isinstance(pytest.raises(NoLabelsError, build, tmp_path, "val").value, NoLabelsError)


def test_class_column_patients_and_the_seeded_split(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 30)
    listed = paths[:25]  # five images without a row: unlabelled, always in train
    classes = ["No Finding", "pneumothorax", "", "Pneumothorax", "No Finding"]
    write_labels(tmp_path, [{"path": p, "class": classes[i % 5], "patient": f"p{i // 2}", "age": 40}
                            for i, p in enumerate(listed)])
    splits = {s: build(tmp_path, s, task=V1) for s in ("train", "val", "test")}
    ids = {s: set(map(str, d.records.ids)) for s, d in splits.items()}
    assert set().union(*ids.values()) == set(paths) and sum(map(len, ids.values())) == 30
    assert set(paths[25:]) <= ids["train"]
    assert len(ids["test"]) in (5, 6) and len(ids["val"]) in (2, 3)  # 5 and round(2.5) = 2 of 25, whole patients
    patients = {s: set(d.records.groups) for s, d in splits.items()}
    assert not patients["train"] & patients["test"] and not patients["train"] & patients["val"]
    assert not patients["val"] & patients["test"]
    expected = {p: {"No Finding": 0, "Pneumothorax": 1}.get(classes[i % 5].title(), -1) for i, p in enumerate(listed)}
    for data in splits.values():
        for path, label in zip(data.records.ids, data.labels, strict=True):
            assert label == expected.get(str(path), -1)
    again = build(tmp_path, "test", task=V1)
    assert list(again.records.ids) == list(splits["test"].records.ids)  # seeded: the same split every time
    assert set(map(str, build(tmp_path, "test", task=V1, seed=1).records.ids)) != ids["test"]
    assert (build(tmp_path, "train").labels == -1).all()  # no task: no label
    assert len(build(tmp_path, task=label_task(3, "0s")))  # both names are classes of v3 too
    write_labels(tmp_path, [{"path": paths[0], "class": "Pneumonia"}])
    one_error(lambda: build(tmp_path, task=V1), "class 'Pneumonia' is not a class of the task v1-0s; its classes: "
              "No Finding, Pneumothorax")
    write_labels(tmp_path, [{"path": paths[0], "class": "Pneumonitis"}])
    one_error(lambda: build(tmp_path), "class 'Pneumonitis' of " + paths[0])


def test_finding_columns_follow_the_label_task_policy_and_the_split_column(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 8)
    rows = [
        {"path": paths[0], "No Finding": 1, "split": "train"},
        {"path": paths[1], "Pneumothorax": 1, "Edema": 0, "split": "train"},
        {"path": paths[2], "Pneumothorax": -1, "split": "train"},  # uncertain: excluded by the policy
        {"path": paths[3], "Pneumothorax": 1, "Edema": 1, "split": "Test"},  # 0s: not isolated, excluded
        {"path": paths[4], "No Finding": 1, "split": "test"},
        {"path": paths[5], "Pneumothorax": 1, "split": "val"},
    ]
    write_labels(tmp_path, rows)
    train, val, test = (build(tmp_path, s, task=V1) for s in ("train", "valid", "test"))
    assert list(map(str, train.records.ids)) == [paths[0], paths[1], paths[6], paths[7]]
    assert train.labels.tolist() == [0, 1, -1, -1]
    assert list(map(str, test.records.ids)) == [paths[4]] and test.labels.tolist() == [0]
    assert list(map(str, val.records.ids)) == [paths[5]] and val.labels.tolist() == [1]
    findings = train[2]["findings"]
    assert findings.shape == (len(CHEXPERT.columns),) and torch.isnan(findings).all()  # unlisted: unknown
    assert train[1]["findings"][CHEXPERT.index("Edema")] == 0
    xs = build(tmp_path, "test", task=label_task(1, "Xs"))
    assert xs.labels.tolist() == [1, 0]  # Xs keeps Pneumothorax with another finding
    # Without a val row, val is a seeded 10% of the train rows (at least one image).
    write_labels(tmp_path, [r | {"split": "train"} if r["split"] == "val" else r for r in rows])
    assert len(build(tmp_path, "val")) == 1 and len(build(tmp_path, "train")) == 3 + 2


def test_each_mistake_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("x")
    one_error(lambda: build(empty), f"no PNG, JPEG or DICOM file under {empty}")
    root = tmp_path / "root"
    paths = write_images(root, 6)
    for rows, says in (
        ([{"path": "site9/missing.png", "class": "No Finding"}], "names site9/missing.png, which does not exist"),
        ([{"path": "notes.txt", "class": "No Finding"}], "names notes.txt, which is no PNG, JPEG or DICOM file"),
        ([{"image": paths[0], "class": "No Finding"}], "lacks the columns path"),
        ([{"path": paths[0], "label": "No Finding"}], "neither a class nor a finding column"),
        ([{"path": paths[0], "class": "No Finding", "Edema": 1}], "both a class column and finding columns"),
        ([{"path": paths[0], "class": "No Finding", "split": "holdout"}], "split 'holdout' of " + paths[0]),
        ([{"path": paths[0], "class": "No Finding", "split": None}], "split '' of " + paths[0]),
        ([{"path": paths[0], "Edema": 2}], "Edema of " + paths[0] + " is 2"),
        ([{"path": paths[0], "Edema": "yes"}], "Edema of " + paths[0] + " is 'yes'"),
        ([{"path": paths[0], "class": "No Finding"}, {"path": paths[0], "class": "No Finding"}], "more than once"),
    ):
        write_labels(root, rows)
        one_error(lambda: build(root, task=V1), says)
    (root / "labels.csv").unlink()
    truncate(root / paths[1])
    one_error(lambda: [build(root)[i] for i in range(6)], "could not be decoded")
    skipping = build(root, on_error="skip")
    assert [skipping[i]["id"] for i in range(6)].count(paths[2]) == 2 and skipping.skipped == {str(root / paths[1])}


def test_unlabelled_images_serve_pretext_data_but_not_a_labelled_task(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 6)
    images, channels = unlabelled_images(parse_data(f"folder={tmp_path}"), RES, None, 0)
    assert len(images) == 6 and channels == 1 and images[5]["image"].shape == (1, RES, RES)
    choice = DataChoice("folder", str(tmp_path), 1, "0s", None)
    one_error(lambda: task_data(choice, choice, RES, 0), f"folder {tmp_path}: none of its 6 images for the training")
    write_labels(tmp_path, [{"path": p, "class": ("No Finding", "Pneumothorax")[i % 2], "split": "train"}
                            for i, p in enumerate(paths[:2])] + [{"path": paths[2], "class": "", "split": "test"}])
    one_error(lambda: task_data(choice, choice, RES, 0), "none of its 1 images for the evaluation set")
    assert get_spec("folder").eval_split == "test" and get_spec("folder").validation_split == "val"


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    paths = write_images(root, 20)
    write_labels(root, [{"path": p, "class": ("No Finding", "Pneumothorax")[i % 2], "patient": f"p{i // 2}"}
                        for i, p in enumerate(paths)])
    return root


def test_finetune_on_a_labelled_folder_and_one_line_without_labels(
    labelled_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data", "folder", "--data-root", str(labelled_folder), "--version", "1", "--setting", "0s",
            "--backbone", "tiny", "--device", "cpu", "--no-progress", "--image-size", "32", "--epochs", "1",
            "--batch-size", "4", "--lr", "1e-3", "--runs-dir", str(tmp_path / "runs")]
    assert finetune([*args, "--name", "own"]) == 0
    results = json.loads((tmp_path / "runs" / "own" / "results.json").read_text())
    assert results["images"] == {"train": 14, "validation": 2, "evaluation": 4}
    (labelled_folder / "labels.csv").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(finetune, [*args, "--name", "unlabelled"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"folder {labelled_folder}: none of its 20 images" in err[0], err
    assert not (tmp_path / "runs" / "unlabelled").exists()


def test_a_partly_labelled_folder_is_an_adaptation_target_scored_on_its_labelled_test_images(
    labelled_folder: Path, tmp_path: Path
) -> None:
    for extra in write_images(tmp_path / "more", 4):  # four images without a row: unlabelled, adapted to
        (labelled_folder / "more" / extra).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "more" / extra).rename(labelled_folder / "more" / extra)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(adapt_main, ["--source", "phantom", "--source-length", "32", "--target", "folder", "--target-root",
                             str(labelled_folder), "--version", "1", "--setting", "0s", "--backbone", "resnet18",
                             "--init", "scratch", "--image-size", "32", "--batch-size", "8", "--steps", "2",
                             "--eval-every", "2", "--device", "cpu", "--no-progress", "--runs-dir",
                             str(tmp_path / "runs"), "--name", "own"])
    assert exit_info.value.code == 0
    results = json.loads((tmp_path / "runs" / "own-dcan-seed0" / "results.json").read_text())
    assert results["images"]["target"] == 14 + 4 and results["images"]["target_evaluation"] == 4


def test_a_synthetic_store_adapts_to_an_unlabelled_folder_and_scores_a_labelled_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, root, runs = tmp_path / "store.zarr", tmp_path / "own", tmp_path / "runs"
    write_store(store)  # v1-0s, 40 training and 10 validation images
    paths = write_images(root, 20)  # PNG, JPEG and DICOM files, no labels.csv
    args = ["--source", "synthetic", "--source-store", str(store), "--target", "folder", "--target-root", str(root),
            "--version", "1", "--setting", "0s", "--alignment", "ours", "--backbone", "resnet18", "--init", "scratch",
            "--image-size", "32", "--batch-size", "8", "--steps", "2", "--eval-every", "2", "--device", "cpu",
            "--no-progress", "--runs-dir", str(runs)]

    def adapt(name: str) -> int:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(adapt_main, [*args, "--name", name])
        return exit_info.value.code

    assert adapt("unlabelled") == 0
    results = json.loads((runs / "unlabelled-ours-seed0" / "results.json").read_text())
    assert results["balanced_accuracy"] is None and "oracle" not in results["figures"]
    assert results["images"]["target"] == 20 and results["images"]["target_evaluation"] == 0
    assert set(results["prior_estimates"]) == {"bbse", "em"} and results["history"][-1]["snd"] is not None
    assert "no target labels" in capsys.readouterr().err
    write_labels(root, [{"path": p, "class": ("No Finding", "Pneumothorax")[i % 2]} for i, p in enumerate(paths)])
    assert adapt("labelled") == 0
    results = json.loads((runs / "labelled-ours-seed0" / "results.json").read_text())
    assert 0.0 <= results["balanced_accuracy"] <= 1.0 and results["figures"]["oracle"]["balanced_accuracy"] is not None
    assert results["images"]["target_evaluation"] == 4 and sum(results["target_prior"]["true"]) == pytest.approx(1)
    for name, rows, match in (
        ("missing", [{"path": "gone.png", "class": "No Finding"}], "gone.png"),
        ("outside", [{"path": paths[0], "class": "Cardiomegaly"}], "Cardiomegaly"),
    ):
        write_labels(root, rows)
        capsys.readouterr()
        assert adapt(name) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
        assert not list(runs.glob(f"{name}-*"))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no image here\n")
    args[args.index(str(root))] = str(empty)
    assert adapt("empty") == 2
    assert "no PNG, JPEG or DICOM" in capsys.readouterr().err and not list(runs.glob("empty-*"))


def test_the_gan_takes_a_folder_with_finding_vectors_and_refuses_one_without(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 6)
    write_labels(tmp_path, [{"path": p, "Pneumothorax": i % 2, "No Finding": 1 - i % 2} for i, p in enumerate(paths)])
    cfg = TrainingConfig(data="folder", resolution=RES)
    assert len(training_dataset(cfg, str(tmp_path))) == 4  # the training split: test and val images held out
    write_labels(tmp_path, [{"path": p, "class": "No Finding"} for p in paths])
    one_error(lambda: training_dataset(cfg, str(tmp_path)), "--data folder: 4 of its 4 training images have no finding")
