"""synth.generate: complete stores, determinism, batch-size invariance, kill-and-resume, bad input, store faults."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image, ImageDraw, ImageFont

from datasets.findings import CHEXPERT
from datasets.label_tables import read_chexpert_table
from datasets.synthetic_store.format import content_attrs
from datasets.synthetic_store.reader import open_synthetic
from evaluate.quality.row_labels import draw_row_label, label_width
from plumbing.cli import run_cli
from plumbing.errors import UserError
from synth.conditions import ConditionSampler
from synth.export import export_generator, load_generator
from synth.generate import main
from synth.generation import GenerationSettings, generate_store
from synth.generator import Generator
from synth.network_config import NetworkConfig
from synth.rendering import render, sample_latents, write_contact_sheet
from tests.test_synthetic_store import fill_disk_at

REPO = Path(__file__).resolve().parents[1]


def _generator_file(path: Path, c_dim: int = 14, columns: list[str] | None = None, **training: object) -> Path:
    torch.manual_seed(0)
    config = NetworkConfig.preset("tiny", resolution=32, c_dim=c_dim)
    G = Generator(config).eval()
    info = {"command": "test", "trained_on_phantoms": True, **training}
    export_generator(path, G, config.to_dict(), info, columns or list(CHEXPERT.columns))
    return path


@pytest.fixture(scope="module")
def gen_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generator_file(tmp_path_factory.mktemp("gen") / "g.safetensors")


def _generate(gen: Path, out: Path | str, *extra: str) -> None:
    main(["--generator", str(gen), "--out", str(out), "--train-per-class", "6", "--val-per-class", "2",
          "--device", "cpu", *extra])


def test_complete_store_opens_with_plain_zarr(gen_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "v3.zarr"
    _generate(gen_file, out, "--version", "3", "--setting", "Xs")
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["complete"] is True
    assert group.attrs["classes"] == ["No Finding", "Pneumothorax", "Pneumonia", "Cardiomegaly"]
    assert group["train/images"].shape == (24, 1, 32, 32) and group["train/images"].dtype == np.uint8
    assert group["val/images"].shape == (8, 1, 32, 32)
    labels = group["train/labels"][:]
    assert np.bincount(labels).tolist() == [6, 6, 6, 6]
    cond = group["train/conditions"][:]
    assert not cond[labels == 0].any()  # No Finding -> all-zero condition
    ptx = CHEXPERT.index("Pneumothorax")
    assert (cond[labels == 1, ptx] == 1).all()
    assert (tmp_path / "v3-contact.png").is_file()
    assert group.attrs["generator"]["sha256"] and group.attrs["generator"]["trained_on_phantoms"] is True


def test_0s_conditions_with_devices_cleared_are_the_class_findings_only(gen_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "v1.zarr"
    _generate(gen_file, out, "--version", "1", "--setting", "0s", "--devices", "clear")
    store = open_synthetic(out)
    assert store.attrs.condition_policy == "clear"
    split = store.split("train")
    ptx = CHEXPERT.index("Pneumothorax")
    expected = np.zeros(14, np.float32)
    expected[ptx] = 1
    assert (split.conditions[split.labels == 1] == expected).all()
    assert not split.conditions[split.labels == 0].any()


def test_0s_conditions_carry_devices_by_default(gen_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "v1.zarr"
    main(["--generator", str(gen_file), "--out", str(out), "--train-per-class", "40", "--val-per-class", "2",
          "--device", "cpu", "--version", "1", "--setting", "0s"])
    store = open_synthetic(out)
    assert store.attrs.condition_policy == "empirical"
    split = store.split("train")
    sampler = ConditionSampler(store.task, CHEXPERT, read_chexpert_table().vectors, devices="empirical")
    assert np.array_equal(split.conditions, sampler.conditions(0, "train", np.arange(len(split))))
    devices = split.conditions[:, CHEXPERT.index("Support Devices")]
    for c in (0, 1):  # about half of the real No Finding and Pneumothorax members carry devices
        assert 0 < devices[split.labels == c].mean() < 1
    _generate(gen_file, tmp_path / "xs.zarr", "--version", "1", "--setting", "Xs")
    assert open_synthetic(tmp_path / "xs.zarr").attrs.condition_policy is None  # Xs takes no policy
    assert "condition_policy" not in zarr.open_group(str(tmp_path / "xs.zarr"), mode="r").attrs  # nor records one


def test_a_0s_store_without_a_condition_policy_reads_as_cleared() -> None:
    assert content_attrs({"setting": "0s"})["condition_policy"] == "clear"
    assert content_attrs({"setting": "Xs"})["condition_policy"] is None


def test_deterministic_and_batch_size_invariant(gen_file: Path, tmp_path: Path) -> None:
    _generate(gen_file, tmp_path / "a.zarr", "--batch-size", "5")
    _generate(gen_file, tmp_path / "b.zarr", "--batch-size", "5")
    _generate(gen_file, tmp_path / "c.zarr", "--batch-size", "3")
    a, b, c = (open_synthetic(tmp_path / f"{n}.zarr").split("train") for n in "abc")
    assert np.array_equal(a.read_images(0, len(a)), b.read_images(0, len(b)))
    for key in ("labels", "conditions", "seeds"):
        assert np.array_equal(getattr(a, key), getattr(c, key))
    diff = np.abs(a.read_images(0, len(a)).astype(int) - c.read_images(0, len(c)).astype(int))
    assert diff.max() <= 1


def test_complete_store_is_not_overwritten(gen_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    _generate(gen_file, out)
    with pytest.raises(UserError, match="--overwrite"):
        _generate(gen_file, out)
    _generate(gen_file, out, "--overwrite")


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(gen_file: Path, tmp_path: Path) -> None:
    args = ["--generator", str(gen_file), "--train-per-class", "16", "--val-per-class", "4", "--block-size", "4",
            "--device", "cpu", "--version", "3", "--setting", "Xs"]
    _generate_ref = [sys.executable, "-m", "synth.generate", "--out", str(tmp_path / "ref.zarr"), *args]
    subprocess.run(_generate_ref, cwd=REPO, check=True, capture_output=True, timeout=300)

    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "synth.generate", "--out", str(out), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done_path = out / "train" / "block_done" / "c"
    while time.time() < deadline and not (done_path.is_dir() and len(os.listdir(done_path)) >= 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(UserError, match="incomplete"):
        open_synthetic(out)
    subprocess.run([sys.executable, "-m", "synth.generate", "--out", str(out), *args], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    ref, got = open_synthetic(tmp_path / "ref.zarr"), open_synthetic(out)
    for split in ("train", "val"):
        r, g = ref.split(split), got.split(split)
        assert np.array_equal(r.read_images(0, len(r)), g.read_images(0, len(g)))
        for key in ("labels", "conditions", "seeds"):
            assert np.array_equal(getattr(r, key), getattr(g, key))


def test_bad_inputs(gen_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--version", "7"], ["--setting", "5s"]):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and bad[1] in err
    wrong = _generator_file(tmp_path / "wrong.safetensors", c_dim=3, columns=["a", "b", "c"])
    with pytest.raises(UserError, match="conditioned on 3"):
        _generate(wrong, tmp_path / "w.zarr")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        _generate(gen_file, blocker / "out.zarr")
    assert not (tmp_path / "w.zarr").exists()
    with pytest.raises(UserError, match="does not exist"):
        _generate(tmp_path / "missing.safetensors", tmp_path / "m.zarr")
    with pytest.raises(UserError, match="--devices applies to setting 0s only"):
        _generate(gen_file, tmp_path / "d.zarr", "--setting", "Xs", "--devices", "clear")


def test_stored_seed_reproduces_the_image(gen_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "seed.zarr"
    _generate(gen_file, out)
    split = open_synthetic(out).split("val")
    loaded = load_generator(gen_file, torch.device("cpu"))
    i = 5
    z = sample_latents(split.seeds[i : i + 1], loaded.generator.z_dim)
    c = torch.from_numpy(split.conditions[i : i + 1])
    again = render(loaded, z, c, 1.0, 1, torch.device("cpu"))
    assert np.abs(again.astype(int) - split.read_images(i, i + 1).astype(int)).max() <= 1


def test_per_condition_truncation_centres_each_class(gen_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "trunc.zarr"
    _generate(gen_file, out, "--version", "1", "--setting", "0s", "--truncation", "0")
    split = open_synthetic(out).split("train")
    images = split.read_images(0, len(split)).astype(int)
    conditions, which = np.unique(split.conditions, axis=0, return_inverse=True)
    assert len(conditions) > 2  # both classes, with and without devices
    for k in range(len(conditions)):  # psi = 0: every image is its condition's average-w image
        same = images[which == k]
        assert (same == same[0]).all()
    assert len({images[which == k][0].tobytes() for k in range(len(conditions))}) == len(conditions)


def test_generator_that_stopped_growing_is_refused(tmp_path: Path) -> None:
    young = _generator_file(tmp_path / "young.safetensors", active_resolution=16, alpha=0.5)
    with pytest.raises(UserError, match="stopped growing at 16 px"):
        _generate(young, tmp_path / "y.zarr")


def test_fsspec_url_output(gen_file: Path) -> None:
    url = "memory://stores/v2.zarr"
    _generate(gen_file, url, "--version", "2", "--setting", "Xs")
    split = open_synthetic(url).split("train")
    assert len(split) == 12 and np.bincount(split.labels).tolist() == [6, 6]
    import fsspec

    assert fsspec.filesystem("memory").exists("/stores/v2-contact.png")


# ----------------------------------------------------------------- store faults


def _same_store(a: Path, b: Path) -> None:
    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for split in ("train", "val"):
        for name in ("images", "labels", "conditions", "seeds", "block_done"):
            assert np.array_equal(ra[f"{split}/{name}"][:], rb[f"{split}/{name}"][:]), (split, name)


def _exit_code_and_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    return exit_info.value.code, [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def _args(gen: Path, out: Path, *extra: str) -> list[str]:
    return ["--generator", str(gen), "--out", str(out), "--train-per-class", "6", "--val-per-class", "2",
            "--device", "cpu", "--block-size", "4", *extra]


@pytest.fixture(scope="module")
def reference(gen_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    main(_args(gen_file, out))
    return out


def test_a_store_generated_from_python_equals_the_commands(gen_file: Path, reference: Path, tmp_path: Path) -> None:
    """synth.generation without argparse: the same settings write the same arrays and content attributes."""
    out = tmp_path / "py.zarr"
    settings = GenerationSettings(train_per_class=6, val_per_class=2)
    cpu = torch.device("cpu")
    store = generate_store(load_generator(gen_file, cpu), out, settings, cpu, block_size=4, progress=False)
    assert store.url == str(out) and store.split_sizes == {"train": 24, "val": 8}
    assert store.classes == ("No Finding", "Pneumothorax", "Pneumonia", "Cardiomegaly")
    assert Path(store.contact_sheet).read_bytes() == reference.with_name("ref-contact.png").read_bytes()
    _same_store(reference, out)
    written, expected = (dict(zarr.open_group(str(p), mode="r").attrs) for p in (out, reference))
    assert content_attrs(written) == content_attrs(expected) and written["generator"] == expected["generator"]
    with pytest.raises(UserError, match="a device policy applies to setting 0s only"):  # Xs takes no device policy
        replace(settings, setting="Xs", devices="clear")
    with pytest.raises(UserError, match="at least one image per class"):
        replace(settings, val_per_class=0)
    with pytest.raises(UserError, match=r"truncation psi must lie in \[0, 2\]"):
        replace(settings, truncation=3.0)


def test_damaged_complete_store_is_reported_and_rerun_rewrites_it(
    gen_file: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    (out / "train" / "images" / "c" / "2" / "0" / "0" / "0").unlink()
    code, err = _exit_code_and_error(_args(gen_file, out), capsys)
    assert code == 2 and len(err) == 1, err
    assert "complete but damaged: train block 2" in err[0] and "rerun" in err[0] and "--overwrite" in err[0]
    main(_args(gen_file, out))  # rewrites the damaged block
    _same_store(reference, out)
    assert open_synthetic(out).split("train").read_images(8, 12).any()


def test_overwrite_replaces_a_store_with_damaged_root_metadata(
    gen_file: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    (out / "zarr.json").write_bytes((out / "zarr.json").read_bytes()[:40])
    code, err = _exit_code_and_error(_args(gen_file, out), capsys)
    assert code == 2 and len(err) == 1 and "unreadable" in err[0] and "--overwrite" in err[0], err
    main(_args(gen_file, out, "--overwrite"))
    _same_store(reference, out)


def test_full_disk_is_one_line_and_a_rerun_resumes(
    gen_file: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.zarr"
    fill_disk_at(monkeypatch, "train/images/c/3/")
    code, err = _exit_code_and_error(_args(gen_file, out), capsys)
    monkeypatch.undo()
    assert code == 2 and len(err) == 1, err
    assert "train block 3" in err[0] and "No space left on device" in err[0] and "stays pending" in err[0]
    done = zarr.open_group(str(out), mode="r")["train/block_done"][:]
    assert (done[:3] != 0).all() and (done[3:] == 0).all()
    main(_args(gen_file, out))
    _same_store(reference, out)


def test_resuming_with_another_block_size_is_refused(
    gen_file: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["complete"] = False  # an interrupted generation
    group["train/block_done"][4] = 0
    args = _args(gen_file, out)[:-2]  # without --block-size
    code, err = _exit_code_and_error([*args, "--block-size", "8"], capsys)
    assert code == 2 and len(err) == 1 and "blocks of 4 images" in err[0] and "--block-size 4" in err[0], err
    main(args)  # without --block-size: the store's own
    _same_store(reference, out)


def test_contact_sheet_of_a_damaged_store_is_one_line(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    shard = out / "val" / "images" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:60])
    with pytest.raises(UserError, match=r"val block 0 \(images unreadable") as exc:
        write_contact_sheet(str(out))
    assert "\n" not in str(exc.value) and str(out) in str(exc.value)


def test_contact_sheet_names_each_row_left_of_its_tiles(reference: Path) -> None:
    store = open_synthetic(reference)
    val, n = store.split("val"), len(store.classes)
    sheet = np.asarray(Image.open(reference.with_name("ref-contact.png")).convert("L"))
    margin, tiles_width = label_width(store.classes, ImageFont.load_default()), 8 * (32 + 2) + 2  # per_class = 8
    assert margin >= 120 and sheet.shape == (n * (32 + 2) + 2, margin + tiles_width)
    labels = []
    for c in range(n):
        top = 2 + c * (32 + 2)
        label = sheet[top - 2 : top + 32, :margin]
        assert (label < 100).sum() > 20 and (label > 200).mean() > 0.5, store.classes[c]  # dark text on white
        labels.append(label.tobytes())
        tiles = sheet[top : top + 32, margin + 2 :].reshape(32, 8, 34)[:, :, :32].transpose(1, 0, 2)
        rows = np.flatnonzero(val.labels == c)
        assert np.array_equal(tiles[: len(rows)], val.read_images(0, len(val))[rows, 0])  # the class's images
        assert not tiles[len(rows) :].any()  # black where the class has fewer than 8
    assert len(set(labels)) == n  # each row its own name


def test_row_labels_widen_the_margin_for_long_names() -> None:
    font = ImageFont.load_default()
    assert label_width(["No Finding", "Pneumothorax"], font) == 120
    width = label_width(["No Finding", "Enlarged Cardiomediastinum"], font)
    assert width > 120
    picture = Image.new("L", (width, 32), "white")
    draw_row_label(ImageDraw.Draw(picture), "Enlarged Cardiomediastinum", 0, 32, font)
    ink = np.flatnonzero((np.asarray(picture) < 100).any(axis=0))
    assert ink.min() >= 2 and ink.max() < width - 2  # the whole name inside the margin


def test_help_shows_one_short_default_per_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert str(REPO) not in text and "(synth/assets/phantom-demo-64.safetensors)" in " ".join(text.split())
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    for option in options:
        assert len(re.findall(r"\bdefault\b", option, re.IGNORECASE)) <= 1, option
