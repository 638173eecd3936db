"""Tiny data sets written in the published layouts of CheXpert, ChestX-ray8, SIIM-COVID and ISIC 2019.

Label rows are real where a real label file ships with torchxrayvision
(CheXpert: the first frontal rows of ``chexpert_train.csv.gz`` plus a lateral
one; NIH: the first rows of ``Data_Entry_2017_v2020.csv.gz``). Radiograph
pixels are phantom radiographs (:func:`datasets.phantoms.render.render_batch`)
drawn from each row's finding vector, small and non-square (the central rows
of a square render) so the readers' crop and resize are exercised.
SIIM-COVID DICOMs are written with pydicom (12 bits stored in 16, MONOCHROME1
files holding the inverted values, some MONOCHROME2 files with a VOI window);
ISIC images are RGB JPEGs of a seeded gradient plus noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from datasets.findings import CHEXPERT, NO_FINDING
from datasets.label_tables import CHEXPERT_BUNDLED, NIH_BUNDLED, bundled_csv, read_chexpert_table, read_nih_table
from datasets.phantoms.render import render_batch
from datasets.sample import to_uint8

HEIGHT, WIDTH = 40, 48  # landscape, so the central square crop drops 4 columns at each side


def gradient_image(seed: int, height: int = HEIGHT, width: int = WIDTH, channels: int = 1) -> np.ndarray:
    """``uint8 [H, W]`` (or ``[H, W, 3]``): a diagonal gradient plus seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 200.0 * (yy / height + xx / width) / 2 + 20
    shape = (height, width) if channels == 1 else (height, width, channels)
    noise = rng.normal(0.0, 10.0, size=shape)
    image = (base if channels == 1 else base[..., None]) + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def phantom_pixels(vectors: np.ndarray, seeds: np.ndarray, domain: str = "phantom") -> np.ndarray:
    """``float32 [B, HEIGHT, WIDTH]`` in [0, 1]: the central rows of square phantom renders of ``vectors``."""
    images, _ = render_batch(vectors, seeds, max(HEIGHT, WIDTH), domain)
    top = (WIDTH - HEIGHT) // 2
    return images[:, 0, top : top + HEIGHT, :].numpy()


# --------------------------------------------------------------------------- CheXpert


def write_chexpert(tmp_path: Path, n_frontal: int = 40, n_valid: int = 8) -> Path:
    """``tmp_path/CheXpert-v1.0-small`` with ``train.csv`` (the first ``n_frontal`` frontal rows
    of the bundled training labels plus the first lateral row), ``valid.csv`` (the next
    ``n_valid`` frontal rows, re-pathed under ``valid/``) and a JPEG per row; returns the root.
    """
    rows = pd.read_csv(bundled_csv(CHEXPERT_BUNDLED), nrows=4 * (n_frontal + n_valid))
    frontal = rows[rows["Frontal/Lateral"] == "Frontal"]
    lateral = rows[rows["Frontal/Lateral"] == "Lateral"].head(1)
    train = pd.concat([frontal.head(n_frontal), lateral]).sort_index()
    valid = frontal.iloc[n_frontal : n_frontal + n_valid].copy()
    valid["Path"] = valid["Path"].str.replace("/train/", "/valid/", regex=False)
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir(parents=True)
    for k, (name, table) in enumerate((("train.csv", train), ("valid.csv", valid))):
        table.to_csv(root / name, index=False)
        vectors = read_chexpert_table(root / name, views=None).vectors
        pixels = to_uint8(torch.from_numpy(phantom_pixels(vectors, np.arange(len(table)) + 1000 * k))).numpy()
        for rel, image in zip(table["Path"], pixels, strict=True):
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, quality=95)
    return root


# --------------------------------------------------------------------------- NIH ChestX-ray8/14


def write_nih(tmp_path: Path, n_rows: int = 30, n_test: int = 10, lists: bool = True) -> Path:
    """``tmp_path/nih`` with the first ``n_rows`` rows of the bundled ``Data_Entry_2017_v2020``,
    8-bit PNGs in ``images/``, and (``lists``) a train/test list with the last ``n_test`` rows as test.
    """
    rows = pd.read_csv(bundled_csv(NIH_BUNDLED), nrows=n_rows)
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    rows.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    vectors = read_nih_table(root / "Data_Entry_2017_v2020.csv", views=None).vectors
    pixels = to_uint8(torch.from_numpy(phantom_pixels(vectors, np.arange(n_rows) + 100, "phantom-nih"))).numpy()
    for name, image in zip(rows["Image Index"], pixels, strict=True):
        Image.fromarray(image).save(root / "images" / name)
    if lists:
        names = rows["Image Index"].tolist()
        (root / "train_val_list.txt").write_text("\n".join(names[: n_rows - n_test]) + "\n")
        (root / "test_list.txt").write_text("\n".join(names[n_rows - n_test :]) + "\n")
    return root


# --------------------------------------------------------------------------- DICOM


def write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, np.ndarray] | None = None,
    transfer_syntax: str | None = None,
    pixel_bytes: bytes | None = None,
) -> Path:
    """Write a 16-bit-allocated monochrome DICOM of the ``uint16 [H, W]`` array ``stored``.

    ``window`` = (center, width) adds a VOI window; ``voi_lut`` = (first stored value mapped,
    ``uint16`` LUT entries) a VOI LUT Sequence with one 16-bit LUT. ``transfer_syntax`` and
    ``pixel_bytes`` write already-encoded (encapsulated) pixel data instead.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, entries = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(entries), first, 16]
        item.add_new(0x00283006, "US", [int(v) for v in entries])  # LUT Data
        ds.VOILUTSequence = [item]
    if pixel_bytes is None:
        ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    else:
        ds.PixelData = encapsulate([pixel_bytes])
        ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def two_tone(high: int, low: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``uint16 [H, W]``: the left half ``high``, the right half ``low``."""
    image = np.full((height, width), low, dtype=np.uint16)
    image[:, : width // 2] = high
    return image


# --------------------------------------------------------------------------- SIIM-COVID

SIIM_CLASSES = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance")
SIIM_STUDY_CLASSES = (0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3)  # 15 studies; the first has two images


def siim_pixels() -> np.ndarray:
    """``float32 [16, HEIGHT, WIDTH]``: the SIIM fixture's images as decoded (MONOCHROME2 polarity).

    Negative studies render "No Finding", the others Pneumonia with Lung Opacity.
    """
    classes = np.array([c for s, c in enumerate(SIIM_STUDY_CLASSES) for _ in range(2 if s == 0 else 1)])
    vectors = np.full((len(classes), len(CHEXPERT.columns)), np.nan, dtype=np.float32)
    vectors[classes == 0, CHEXPERT.index(NO_FINDING)] = 1.0
    vectors[classes > 0, CHEXPERT.index("Pneumonia")] = 1.0
    vectors[classes > 0, CHEXPERT.index("Lung Opacity")] = 1.0
    return phantom_pixels(vectors, np.arange(len(classes)) + 300)


def write_siim(tmp_path: Path) -> Path:
    """``tmp_path/siim`` in the competition layout: 15 studies (classes ``SIIM_STUDY_CLASSES``),
    16 images (study 0 has two; image ``k`` in CSV order shows ``siim_pixels()[k]``), 12-bit
    DICOMs: MONOCHROME1 (stored ``4095 * (1 - x)``) for even studies, MONOCHROME2 (stored
    ``4095 * x``, with the identity window center 2048 / width 4096) for odd ones.
    """
    root = tmp_path / "siim"
    pixels = siim_pixels()
    studies, images = [], []
    for s, cls in enumerate(SIIM_STUDY_CLASSES):
        study = f"1.2.826.0.1.3680043.8.498.{1000 + s}"
        series = f"1.2.826.0.1.3680043.8.498.{2000 + s}"
        studies.append({"id": f"{study}_study", **{c: int(k == cls) for k, c in enumerate(SIIM_CLASSES)}})
        for j in range(2 if s == 0 else 1):
            uid = f"1.2.826.0.1.3680043.8.498.{3000 + 10 * s + j}"
            x = pixels[len(images)]
            monochrome1 = s % 2 == 0
            stored = np.round(4095 * (1.0 - x if monochrome1 else x)).astype(np.uint16)
            photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
            window = None if monochrome1 else (2048.0, 4096.0)
            write_dicom(root / "train" / study / series / f"{uid}.dcm", stored, photometric, window=window)
            images.append({"id": f"{uid}_image", "boxes": "", "label": "none 1 0 0 1 1", "StudyInstanceUID": study})
    pd.DataFrame(studies).to_csv(root / "train_study_level.csv", index=False)
    pd.DataFrame(images).to_csv(root / "train_image_level.csv", index=False)
    return root


# --------------------------------------------------------------------------- ISIC 2019

ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ISIC_COUNTS = (10, 15, 5, 3, 3, 1, 1, 2)  # 40 images; one more row is UNK only
ISIC_GT = "ISIC_2019_Training_GroundTruth.csv"


def write_isic(tmp_path: Path) -> Path:
    """``tmp_path/isic`` with ``ISIC_2019_Training_Input/*.jpg`` (RGB) and the ground-truth CSV:
    ``ISIC_COUNTS`` images per class plus one UNK row (dropped by the reader).
    """
    root = tmp_path / "isic"
    folder = root / "ISIC_2019_Training_Input"
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(len(ISIC_CLASSES)), ISIC_COUNTS)
    rows = []
    for i, cls in enumerate([*labels, -1]):
        name = f"ISIC_{i:07d}"
        onehot = {c: float(k == cls) for k, c in enumerate(ISIC_CLASSES)}
        rows.append({"image": name, **onehot, "UNK": float(cls == -1)})
        Image.fromarray(gradient_image(500 + i, channels=3)).save(folder / f"{name}.jpg", quality=95)
    (folder / "ATTRIBUTION.txt").write_text("synthetic test images\n")  # the release ships non-image files too
    pd.DataFrame(rows).to_csv(root / ISIC_GT, index=False)
    return root


def truncate(path: str | Path, keep: int = 64) -> Path:
    """Cut a file to its first ``keep`` bytes (a corrupt image)."""
    path = Path(path)
    data = path.read_bytes()[:keep]
    path.write_bytes(data)
    return path
