"""Label-task policy on hand-made finding vectors, and the label-table readers."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from datasets.findings import CHEXPERT, NIH, FindingSchema
from datasets.label_tables import read_chexpert_table, read_nih_table
from datasets.label_tasks import (
    SETTINGS,
    VERSIONS,
    assign_classes,
    class_counts,
    class_membership,
    finding_distribution,
    label_task,
)
from plumbing.errors import UserError

NAN = float("nan")


def chexpert_row(**labels: float) -> np.ndarray:
    """A CheXpert vector: blank everywhere except ``labels`` (underscores stand for spaces)."""
    row = np.full(len(CHEXPERT.columns), np.nan, dtype=np.float32)
    for name, value in labels.items():
        row[CHEXPERT.index(name.replace("_", " "))] = value
    return row


def nih_row(*findings: str) -> np.ndarray:
    """An NIH vector with ``findings`` set to 1 (no argument: "No Finding")."""
    row = np.zeros(len(NIH.columns), dtype=np.float32)
    for name in findings or ("No Finding",):
        row[NIH.index(name)] = 1.0
    return row


def label_of(row: np.ndarray, schema: FindingSchema, version: int, setting: str) -> str | None:
    task = label_task(version, setting)
    index = int(assign_classes(row[None], schema, task)[0])
    return None if index < 0 else task.classes[index]


# --- the task object -------------------------------------------------------------------------


def test_label_task_names_and_classes() -> None:
    task = label_task(3, "Xs")
    assert task.name == "v3-Xs"
    assert task.classes == ("No Finding", "Pneumothorax", "Pneumonia", "Cardiomegaly")
    assert label_task(2, "0s").classes == ("No Finding", "Finding")
    assert set(VERSIONS) == {1, 2, 3} and SETTINGS == ("0s", "Xs")


@pytest.mark.parametrize(
    ("version", "setting", "needle"),
    [(4, "0s", "1, 2, 3"), ("3", "0s", "1, 2, 3"), (True, "0s", "1, 2, 3"), (1, "xs", "0s, Xs")],
)
def test_label_task_rejects_bad_input(version: object, setting: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        label_task(version, setting)  # type: ignore[arg-type]


# --- CheXpert rules --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("setting", SETTINGS)
def test_no_finding_class(version: int, setting: str) -> None:
    # Positive: "No Finding" 1, findings 0 or blank; Support Devices is not a finding.
    assert label_of(chexpert_row(No_Finding=1, Support_Devices=1, Edema=0), CHEXPERT, version, setting) == "No Finding"
    # Negative: an uncertain or positive finding, or "No Finding" not 1.
    assert label_of(chexpert_row(No_Finding=1, Fracture=-1), CHEXPERT, version, setting) is None
    assert label_of(chexpert_row(No_Finding=1, Fracture=1), CHEXPERT, version, setting) != "No Finding"
    assert label_of(chexpert_row(Edema=0, Fracture=0), CHEXPERT, version, setting) is None


def test_finding_class_isolated() -> None:
    # Positive: F is 1, every other finding 0 or blank (Support Devices anything).
    for version in (1, 3):
        assert (
            label_of(chexpert_row(Pneumothorax=1, Edema=0, Support_Devices=1), CHEXPERT, version, "0s")
            == "Pneumothorax"
        )
    assert label_of(chexpert_row(Cardiomegaly=1, Support_Devices=-1), CHEXPERT, 3, "0s") == "Cardiomegaly"
    # Negative: any other finding 1 or -1, class finding or not.
    assert label_of(chexpert_row(Pneumothorax=1, Edema=1), CHEXPERT, 1, "0s") is None
    assert label_of(chexpert_row(Pneumothorax=1, Lung_Opacity=-1), CHEXPERT, 1, "0s") is None
    assert label_of(chexpert_row(Pneumonia=1, Cardiomegaly=-1), CHEXPERT, 3, "0s") is None
    assert label_of(chexpert_row(Pneumothorax=0), CHEXPERT, 1, "0s") is None


def test_finding_class_combined() -> None:
    # Positive: other findings may be anything when they are not class findings of the version.
    row = chexpert_row(Pneumothorax=1, Edema=1, Lung_Opacity=-1, Pneumonia=1)
    assert label_of(row, CHEXPERT, 1, "Xs") == "Pneumothorax"  # Pneumonia is no class of v1
    assert label_of(chexpert_row(Cardiomegaly=1, Edema=1, Fracture=-1), CHEXPERT, 3, "Xs") == "Cardiomegaly"
    # Negative: another class finding of the version is 1 or -1.
    assert label_of(row, CHEXPERT, 3, "Xs") is None
    assert label_of(chexpert_row(Pneumothorax=1, Cardiomegaly=-1), CHEXPERT, 3, "Xs") is None
    assert label_of(chexpert_row(Pneumothorax=-1, Edema=1), CHEXPERT, 1, "Xs") is None


def test_class_finding_uncertain_is_excluded() -> None:
    for setting in SETTINGS:
        assert label_of(chexpert_row(Pneumothorax=-1), CHEXPERT, 1, setting) is None
        assert label_of(chexpert_row(Pneumothorax=-1, No_Finding=1), CHEXPERT, 1, setting) is None
        assert label_of(chexpert_row(Cardiomegaly=1, Pneumonia=-1), CHEXPERT, 3, setting) is None
    # Positive counterpart: the same image without the uncertain class finding is kept.
    assert label_of(chexpert_row(Cardiomegaly=1, Pneumonia=0), CHEXPERT, 3, "Xs") == "Cardiomegaly"


def test_v2_finding_class() -> None:
    # 0s: exactly one finding 1 and no finding -1.
    assert label_of(chexpert_row(Edema=1, Fracture=0, Support_Devices=1), CHEXPERT, 2, "0s") == "Finding"
    assert label_of(chexpert_row(Edema=1, Fracture=1), CHEXPERT, 2, "0s") is None
    assert label_of(chexpert_row(Edema=1, Fracture=-1), CHEXPERT, 2, "0s") is None
    # Xs: at least one finding 1, whatever the others.
    assert label_of(chexpert_row(Edema=1, Fracture=-1, Cardiomegaly=1), CHEXPERT, 2, "Xs") == "Finding"
    assert label_of(chexpert_row(Edema=-1, Fracture=-1), CHEXPERT, 2, "Xs") is None
    # Support Devices alone is no finding: neither class.
    for setting in SETTINGS:
        assert label_of(chexpert_row(Support_Devices=1), CHEXPERT, 2, setting) is None


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("setting", SETTINGS)
def test_classes_are_exclusive_and_labels_match_rules(version: int, setting: str) -> None:
    rng = np.random.default_rng(version)
    vectors = rng.choice(
        np.array([1.0, 0.0, -1.0, NAN], dtype=np.float32), size=(4000, len(CHEXPERT.columns)), p=[0.1, 0.4, 0.05, 0.45]
    )
    vectors[rng.random(4000) < 0.3] = chexpert_row(No_Finding=1, Support_Devices=1)
    task = label_task(version, setting)
    members = class_membership(vectors, CHEXPERT, task)
    labels = assign_classes(vectors, CHEXPERT, task)
    assert members.sum(axis=1).max() <= 1
    assert np.array_equal(labels >= 0, members.any(axis=1))
    assert np.all(members[labels >= 0, labels[labels >= 0]])
    counts = class_counts(vectors, CHEXPERT, task)
    assert list(counts) == list(task.classes)
    assert list(counts.values()) == [int((labels == c).sum()) for c in range(len(task.classes))]
    assert all(n > 0 for n in counts.values())


# --- NIH rules (vectors of 1 and 0 only) -----------------------------------------------------


def test_nih_rules() -> None:
    for version in (1, 2, 3):
        for setting in SETTINGS:
            assert label_of(nih_row(), NIH, version, setting) == "No Finding"
            assert label_of(np.zeros(len(NIH.columns), np.float32), NIH, version, setting) is None
    # F in 0s: the only finding.
    assert label_of(nih_row("Pneumothorax"), NIH, 1, "0s") == "Pneumothorax"
    assert label_of(nih_row("Pneumothorax", "Effusion"), NIH, 1, "0s") is None
    # F in Xs: the only class finding of the version.
    assert label_of(nih_row("Pneumothorax", "Effusion"), NIH, 3, "Xs") == "Pneumothorax"
    assert label_of(nih_row("Pneumothorax", "Pneumonia"), NIH, 3, "Xs") is None
    assert label_of(nih_row("Pneumothorax", "Pneumonia"), NIH, 1, "Xs") == "Pneumothorax"
    assert label_of(nih_row("Cardiomegaly", "Hernia"), NIH, 3, "0s") is None
    # Finding: exactly one (0s) or at least one (Xs).
    assert label_of(nih_row("Mass"), NIH, 2, "0s") == "Finding"
    assert label_of(nih_row("Mass", "Nodule"), NIH, 2, "0s") is None
    assert label_of(nih_row("Mass", "Nodule"), NIH, 2, "Xs") == "Finding"


def test_vectors_must_match_schema() -> None:
    with pytest.raises(ValueError, match="columns"):
        assign_classes(np.zeros((3, 5), np.float32), NIH, label_task(1, "0s"))


# --- finding distributions -------------------------------------------------------------------


def test_finding_distribution_sums_to_one_over_member_vectors() -> None:
    rows = [
        chexpert_row(No_Finding=1),
        chexpert_row(No_Finding=1, Support_Devices=1),
        chexpert_row(No_Finding=1),
        chexpert_row(Pneumothorax=1, Edema=1),
        chexpert_row(Pneumothorax=1, Edema=1, Fracture=0),
        chexpert_row(Pneumothorax=1, Lung_Opacity=1),
        chexpert_row(Pneumothorax=1, Pneumonia=1),  # a member: Pneumonia is no class of v1
        chexpert_row(Edema=1),  # in no class of v1
    ]
    vectors = np.stack(rows)
    task = label_task(1, "Xs")
    dist = finding_distribution(vectors, CHEXPERT, task)
    assert list(dist) == ["No Finding", "Pneumothorax"]
    labels = assign_classes(vectors, CHEXPERT, task)
    condition = CHEXPERT.condition(vectors)
    for c, (unique, probs) in enumerate(dist.values()):
        members = condition[labels == c]
        assert probs.sum() == pytest.approx(1.0)
        assert unique.shape == (len(probs), len(CHEXPERT.columns))
        assert np.all(np.diff(probs) <= 0)
        for u, p in zip(unique, probs, strict=True):
            same = np.all(members == u, axis=1)
            assert same.any() and p == pytest.approx(same.mean())
        assert unique[:, CHEXPERT.index("No Finding")].max() == 0
    # The Edema-only row (no member) contributes no vector.
    edema_only = CHEXPERT.condition(chexpert_row(Edema=1)[None])[0]
    assert not any(np.all(u == edema_only, axis=1).any() for u, _ in dist.values())
    np.testing.assert_allclose(dist["No Finding"][1], [2 / 3, 1 / 3])
    np.testing.assert_allclose(dist["Pneumothorax"][1], [0.5, 0.25, 0.25])


def test_finding_distribution_refuses_empty_class() -> None:
    with pytest.raises(UserError, match="Pneumonia"):
        finding_distribution(np.stack([nih_row(), nih_row("Pneumothorax")]), NIH, label_task(3, "0s"))


# --- label tables ----------------------------------------------------------------------------

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT.columns)


def chexpert_csv_line(path: str, frontal: str, view: str, **labels: str) -> str:
    values = [labels.get(c.replace(" ", "_"), "") for c in CHEXPERT.columns]
    return ",".join([path, "Female", "60", frontal, view, *values])


@pytest.fixture
def chexpert_csv(tmp_path):
    lines = [
        CHEXPERT_HEADER,
        chexpert_csv_line(
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            "Frontal",
            "PA",
            No_Finding="1.0",
            Support_Devices="1.0",
        ),
        chexpert_csv_line(
            "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg",
            "Frontal",
            "AP",
            Pneumothorax="1.0",
            Edema="-1.0",
            Fracture="0.0",
        ),
        chexpert_csv_line(
            "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg", "Lateral", "", Pneumothorax="1.0"
        ),
        chexpert_csv_line(
            "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg", "Frontal", "LL", Cardiomegaly="1.0"
        ),
        chexpert_csv_line("elsewhere/image.jpg", "Frontal", "", Edema="1.0"),
    ]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_chexpert_table(chexpert_csv) -> None:
    table = read_chexpert_table(chexpert_csv)
    assert len(table) == 2 and table.schema is CHEXPERT
    assert list(table.views) == ["PA", "AP"]
    assert list(table.patients) == ["patient00001", "patient00002"]
    assert table.ids[1].endswith("patient00002/study1/view1_frontal.jpg")
    assert table.vectors.dtype == np.float32 and table.vectors.shape == (2, len(CHEXPERT.columns))
    row = table.vectors[1]
    assert row[CHEXPERT.index("Pneumothorax")] == 1 and row[CHEXPERT.index("Edema")] == -1
    assert row[CHEXPERT.index("Fracture")] == 0 and np.isnan(row[CHEXPERT.index("Cardiomegaly")])
    everything = read_chexpert_table(chexpert_csv, views=None)
    assert list(everything.views) == ["PA", "AP", "L", "LL", "UNKNOWN"]
    assert everything.patients[4] == "elsewhere/image.jpg"
    assert list(read_chexpert_table(chexpert_csv, views=["L", "LL"]).views) == ["L", "LL"]


def test_read_chexpert_table_errors(tmp_path, chexpert_csv) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text(chexpert_csv.read_text().replace("Pneumothorax", "Pneumo").replace("AP/PA", "View"))
    with pytest.raises(UserError) as info:
        read_chexpert_table(broken)
    message = str(info.value)
    assert "\n" not in message and str(broken) in message and "AP/PA, Pneumothorax" in message
    with pytest.raises(UserError, match="does not exist"):
        read_chexpert_table(tmp_path / "absent.csv")
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"\x1f\x8b\x08not really gzip")
    with pytest.raises(UserError, match="could not be read"):
        read_chexpert_table(garbage)
    odd = tmp_path / "odd.csv"
    odd.write_text(CHEXPERT_HEADER + "\n" + chexpert_csv_line("p/patient1/a.jpg", "Frontal", "PA", Edema="2.0") + "\n")
    with pytest.raises(UserError, match="Edema"):
        read_chexpert_table(odd)


NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def test_read_nih_table(tmp_path) -> None:
    path = tmp_path / "Data_Entry_2017.csv.gz"
    rows = [
        NIH_HEADER,
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
        "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,AP,2894,2729,0.143,0.143",
        "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
        "00000003_000.png,Hernia,0,3,81,F,LL,2500,2048,0.171,0.171",
    ]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    table = read_nih_table(path)
    assert table.schema is NIH and list(table.ids) == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    assert list(table.views) == ["PA", "AP", "PA"] and list(table.patients) == ["1", "1", "2"]
    expected = np.stack([nih_row("Cardiomegaly"), nih_row("Cardiomegaly", "Emphysema"), nih_row()])
    np.testing.assert_array_equal(table.vectors, expected)
    assert len(read_nih_table(path, views=None)) == 4

    unknown = tmp_path / "unknown.csv"
    unknown.write_text(NIH_HEADER + "\n00000004_000.png,Cardiomegaly|Tumour,0,4,50,F,PA,1,1,0.1,0.1\n")
    with pytest.raises(UserError, match="Tumour"):
        read_nih_table(unknown)
    missing = tmp_path / "missing.csv"
    missing.write_text("Image Index,Finding Labels\n00000004_000.png,Mass\n")
    with pytest.raises(UserError) as info:
        read_nih_table(missing)
    assert "Patient ID, View Position" in str(info.value) and str(missing) in str(info.value)


def test_bundled_tables_are_cached_and_counted() -> None:
    chexpert = read_chexpert_table(views=None)
    assert chexpert is read_chexpert_table(views=None) and len(chexpert) == 223_414
    assert not chexpert.vectors.flags.writeable
    frontal = read_chexpert_table()
    assert len(frontal) == 191_010 and set(frontal.views) == {"PA", "AP"}
    nih = read_nih_table()
    assert len(nih) == 112_120
    # Published ChestX-ray14 facts: 60,361 images without findings, 2,194 with Pneumothorax alone.
    assert class_counts(nih.vectors, NIH, label_task(1, "0s")) == {"No Finding": 60_361, "Pneumothorax": 2_194}
    counts = class_counts(frontal.vectors, CHEXPERT, label_task(3, "Xs"))
    assert counts == {"No Finding": 16_970, "Pneumothorax": 15_964, "Pneumonia": 4_019, "Cardiomegaly": 20_361}
