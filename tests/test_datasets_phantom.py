"""Phantom radiographs: determinism, shapes, finding effects on the pixels, domains, tasks and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datasets.findings import CHEXPERT, NIH, NO_FINDING
from datasets.label_tasks import assign_classes, label_task
from datasets.phantom_grid import main
from datasets.phantoms.anatomy import build_anatomy
from datasets.phantoms.canvas import lung_atlas, make_canvas
from datasets.phantoms.dataset import PhantomDataset
from datasets.phantoms.render import render_batch, rendered_findings
from datasets.phantoms.streams import Streams
from datasets.phantoms.styles import FONT, STYLES, draw_style
from datasets.registry import build_dataset, get_spec
from plumbing.cli import run_cli
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SEEDS = list(range(500, 510))


def vectors(schema, finding: str | None, n: int = len(SEEDS)) -> np.ndarray:
    """``n`` vectors with only ``finding`` positive (``None``: "No Finding")."""
    v = np.zeros((n, len(schema.columns)), dtype=np.float32)
    v[:, schema.index(finding or NO_FINDING)] = 1.0
    return v


@pytest.fixture(scope="module")
def normal64() -> tuple[torch.Tensor, torch.Tensor]:
    return render_batch(vectors(CHEXPERT, None), SEEDS, 64, "phantom")


def paired_difference(finding: str, normal64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel change ``[B, H, W]`` when ``finding`` is switched on for the same seeds, and the lung masks."""
    images, masks = render_batch(vectors(CHEXPERT, finding), SEEDS, 64, "phantom")
    assert torch.equal(masks, normal64[1])  # the anatomy does not move
    return (images - normal64[0])[:, 0], masks[:, 0].bool()


def lung_rows(mask: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The part of each lung mask between fractions ``lo`` and ``hi`` of its height (top = 0)."""
    out = torch.zeros_like(mask)
    for i, m in enumerate(mask):
        rows = torch.nonzero(m.any(dim=1)).flatten()
        top, bottom = rows.min().item(), rows.max().item()
        keep = torch.zeros(m.shape[0], dtype=torch.bool)
        keep[int(top + lo * (bottom - top)) : int(top + hi * (bottom - top)) + 1] = True
        out[i] = m & keep[:, None]
    return out


def test_lung_atlas_is_compact_and_real() -> None:
    atlas = lung_atlas()
    assert len(atlas) == 435  # the non-empty two-lung masks of torchxrayvision's archive
    assert (ROOT / "datasets/assets/lung_masks.npz").stat().st_size < 3_000_000
    area = atlas.masks.float().mean(dim=(1, 2, 3))
    assert float(area.min()) > 0.2 and float(area.max()) < 0.95


def test_same_index_same_image_and_different_index_different_image() -> None:
    ds = PhantomDataset("phantom", resolution=32, length=6, seed=3)
    a, b = ds[2], ds[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    again = PhantomDataset("phantom", resolution=32, length=6, seed=3)[2]
    assert torch.equal(a["image"], again["image"]) and a["id"] == again["id"]
    assert not torch.equal(a["image"], ds[3]["image"])
    assert not torch.equal(a["image"], PhantomDataset("phantom", resolution=32, length=6, seed=4)[2]["image"])
    assert not torch.equal(
        a["image"], PhantomDataset("phantom", split="valid", resolution=32, length=6, seed=3)[2]["image"]
    )
    # a batched fetch renders the same sample, up to float rounding of batched kernels
    batched = ds.__getitems__([3, 2, 0])[1]
    torch.testing.assert_close(batched["image"], a["image"], atol=1e-5, rtol=0)
    assert torch.equal(batched["mask"], a["mask"])


@pytest.mark.parametrize("domain,schema", [("phantom", CHEXPERT), ("phantom-nih", NIH)])
@pytest.mark.parametrize("resolution", [32, 64])
def test_sample_shapes_ranges_and_masks(domain: str, schema, resolution: int) -> None:
    ds = PhantomDataset(domain, resolution=resolution, length=4, seed=1)
    for sample in ds.__getitems__([0, 1, 2, 3]):
        image, mask = sample["image"], sample["mask"]
        assert image.shape == mask.shape == (1, resolution, resolution)
        assert image.dtype == mask.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.std()) > 0.05
        assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
        assert 0.1 < float(mask.mean()) < 0.6
        assert mask[0, 0].sum() == mask[0, -1].sum() == mask[0, :, 0].sum() == mask[0, :, -1].sum() == 0
        assert sample["findings"].shape == (len(schema.columns),) and sample["findings"].dtype == torch.float32
        assert sample["label"] == -1 and isinstance(sample["id"], str)
        # aerated lung is darker than the rest of the body
        assert float(image[mask > 0].mean()) < float(image[(mask == 0) & (image > 0.3)].mean())


def test_lung_mask_lies_inside_the_body() -> None:
    style = STYLES["phantom-nih"]
    streams = Streams(SEEDS, 64, torch.device("cpu"))
    params = draw_style(style, streams.draws)
    canvas = make_canvas(streams.draws, streams, 64, params.fov, torch.device("cpu"))
    no = torch.zeros(len(SEEDS), dtype=torch.bool)
    anatomy = build_anatomy(canvas, streams.draws, no, no, no)
    assert anatomy.body.shape == canvas.lung.shape
    assert float((canvas.lung * (anatomy.body < 0.99)).sum()) == 0.0


def test_cardiomegaly_widens_the_heart(normal64) -> None:
    diff, mask = paired_difference("Cardiomegaly", normal64)
    lower = lung_rows(mask, 0.5, 1.0)
    # the enlarged heart covers the lower lungs next to it: their mean brightness rises in every image
    rise = torch.stack([diff[i][lower[i]].mean() for i in range(len(SEEDS))])
    assert float(rise.min()) > 0.02
    # and it is wider: more pixels of the heart rows are at least as bright as the normal heart's median
    images = normal64[0][:, 0] + diff
    for i in range(len(SEEDS)):
        rows = lower[i].any(dim=1)
        heart_level = normal64[0][i, 0][rows][~mask[i][rows]].median()
        assert (images[i][rows] >= heart_level).sum() > (normal64[0][i, 0][rows] >= heart_level).sum()


def test_effusion_raises_basal_lung_intensity(normal64) -> None:
    diff, mask = paired_difference("Pleural Effusion", normal64)
    basal, apical = lung_rows(mask, 0.7, 1.0), lung_rows(mask, 0.0, 0.3)
    basal_rise = torch.stack([diff[i][basal[i]].mean() for i in range(len(SEEDS))])
    apical_rise = torch.stack([diff[i][apical[i]].mean() for i in range(len(SEEDS))])
    assert float(basal_rise.min()) > 0.03
    assert bool((basal_rise > apical_rise + 0.02).all())


def test_pneumothorax_darkens_part_of_the_lung(normal64) -> None:
    diff, mask = paired_difference("Pneumothorax", normal64)
    for i in range(len(SEEDS)):
        darker = (diff[i] < -0.04) & mask[i]
        assert float(darker.sum()) > 0.05 * float(mask[i].sum())
        assert float((diff[i] > 0.1).float().mean()) < 0.01  # nothing bright is added


def test_support_devices_add_bright_thin_structures(normal64) -> None:
    diff, _ = paired_difference("Support Devices", normal64)
    for i in range(len(SEEDS)):
        bright = diff[i] > 0.12
        assert 0.002 < float(bright.float().mean()) < 0.1
        # thin: most brightened pixels have a neighbour that did not brighten
        eroded = -F.max_pool2d(-bright.float()[None, None], 3, stride=1, padding=1)[0, 0]
        assert float(eroded.sum()) < 0.5 * float(bright.sum())


@pytest.mark.parametrize(
    "finding", ["Pneumonia", "Consolidation", "Edema", "Lung Opacity", "Atelectasis", "Lung Lesion"]
)
def test_lung_findings_raise_lung_opacity(finding: str, normal64) -> None:
    diff, mask = paired_difference(finding, normal64)
    rise = torch.stack([diff[i][mask[i]].clamp(min=0).amax() for i in range(len(SEEDS))])
    assert float(rise.min()) > 0.03


def test_uncertain_labels_render_with_probability_one_half() -> None:
    v = vectors(CHEXPERT, None, 400)
    v[:, CHEXPERT.index("Edema")] = -1
    shown = rendered_findings(v, np.arange(400))[:, CHEXPERT.index("Edema")]
    assert 150 < int(shown.sum()) < 250
    again = rendered_findings(v, np.arange(400))[:, CHEXPERT.index("Edema")]
    assert torch.equal(shown, again)


def test_domains_differ_measurably() -> None:
    chex = render_batch(vectors(CHEXPERT, None, 8), SEEDS[:8], 64, "phantom")
    nih = render_batch(vectors(NIH, None, 8), SEEDS[:8], 64, "phantom-nih")

    def stats(images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float, float]:
        smooth = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        fine = (images - smooth)[:, :, 52:60, 24:40]  # noise in the smooth soft tissue of the abdomen
        return float(images.mean()), float(images.std(dim=(1, 2, 3)).mean()), float(fine.std())

    (m1, s1, hf1), (m2, s2, hf2) = stats(*chex), stats(*nih)
    assert abs(m1 - m2) > 0.03 and abs(s1 - s2) > 0.03
    assert hf1 > 1.5 * hf2  # the CheXpert-like style is noisier


def test_label_task_filtering_and_balance() -> None:
    task = label_task(3, "0s")
    ds = PhantomDataset("phantom", task=task, resolution=32, length=6, seed=2)
    for sample in ds.__getitems__(list(range(6))):
        expected = assign_classes(sample["findings"].numpy()[None], CHEXPERT, task)[0]
        assert sample["label"] == expected >= 0
    balanced = PhantomDataset("phantom", task=task, resolution=32, length=400, seed=2, balanced=True)
    counts = np.bincount([int(balanced.classes[balanced.row(i)]) for i in range(400)], minlength=4)
    assert counts.min() > 60  # uniform classes (100 each on average), although No Finding dominates the table
    nih = PhantomDataset("phantom-nih", task=label_task(1, "Xs"), resolution=32, length=3, seed=0)
    assert all(s["label"] in (0, 1) for s in nih.__getitems__([0, 1, 2]))
    with pytest.raises(UserError):
        PhantomDataset("phantom", resolution=32, balanced=True)


def test_shortcut_mark_agrees_with_the_class() -> None:
    task = label_task(1, "0s")
    always = PhantomDataset("phantom", task=task, resolution=64, length=40, seed=0, shortcut=1.0, balanced=True)
    never = PhantomDataset("phantom", task=task, resolution=64, length=40, seed=0, shortcut=0.0, balanced=True)
    for i in range(40):
        row = always.row(i)
        assert always.mark(i, row) == always.classes[row]
        assert never.mark(i, row) == 1 - never.classes[row]
    samples = always.__getitems__(list(range(6)))
    for sample in samples:
        patch = sample["image"][0, 59:61, 59:61]  # centre of slot 1 at (0.86, 0.86)
        assert (float(patch.min()) > 0.85) == (sample["label"] == 1)
        assert float(sample["mask"][0, 59:61, 59:61].sum()) == 0.0


def test_registry_and_data_loader() -> None:
    for name, schema in (("phantom", CHEXPERT), ("phantom-nih", NIH)):
        spec = get_spec(name)
        assert spec.env_var is None and spec.channels == 1 and spec.schema == schema and spec.classes is None
    ds = build_dataset("phantom-nih", split="val", resolution=32, length=8, seed=5)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["findings"].shape == (4, len(NIH.columns))
    torch.testing.assert_close(batch["image"][1], ds[1]["image"], atol=1e-5, rtol=0)
    augmented = build_dataset("phantom", resolution=32, length=2, augment=True)[0]
    assert augmented["image"].shape == (1, 32, 32) and float(augmented["image"].max()) <= 1.0
    assert set(torch.unique(augmented["mask"]).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("resolution", [16, 31, 513])
def test_resolution_outside_32_to_512_is_a_user_error(resolution: int) -> None:
    with pytest.raises(UserError):
        PhantomDataset("phantom", resolution=resolution)


def test_marker_texts_are_in_the_font() -> None:
    for style in STYLES.values():
        for marker in style.markers:
            assert all(set(text) <= set(FONT) for text in marker.texts)


def test_cli_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--n", "3", "--resolution", "32", "--out", str(out), "--version", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "datasets.phantom_grid", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


@pytest.mark.parametrize(
    "args",
    [
        ["--resolution", "16"],
        ["--resolution", "600"],
        ["--n", "0"],
        ["--out", "/nonexistent-folder/grid.png"],
        ["--version", "7"],
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(args: list[str], tmp_path: Path, capsys) -> None:
    argv = ["--n", "2", "--resolution", "32", "--out", str(tmp_path / "grid.png"), *args]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [["--batch", "0"], ["--batch", "-3"], ["--resolutions", "64", "0"], ["--repeats", "0"], ["--threads", "0"]],
)
def test_bench_zero_sizes_exit_2_with_one_line(args: list[str], capsys) -> None:
    from bench.phantom import main as bench_main

    with pytest.raises(SystemExit) as exit_info:
        run_cli(bench_main, ["--resolutions", "32", *args])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m bench.phantom: error: ")
