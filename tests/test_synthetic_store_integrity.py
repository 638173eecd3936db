"""Synthetic store integrity: missing and damaged objects, missing arrays, full disks, root metadata, layouts.

Every fault is one :class:`UserError` line naming the store and the block.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr

from datasets.block_loader import BlockLoader
from datasets.registry import build_dataset
from datasets.synthetic import SyntheticDataset
from datasets.synthetic_store.format import GeneratorRecord, StoreAttrs, StoreLayout
from datasets.synthetic_store.reader import open_synthetic, verify_store
from datasets.synthetic_store.writer import SyntheticStoreWriter, write_pending_blocks
from plumbing.errors import UserError
from tests.test_synthetic_store import (
    LAYOUT,
    RES,
    SIZES,
    assert_store_matches,
    content_rows,
    fill_disk_at,
    make_attrs,
    open_writer,
    resume_and_finish,
    write_blocks,
    write_store,
)

# objects of train block 1 (rows 16..31) under the test layout
BLOCK_1 = {
    "images": "train/images/c/1/0/0/0",
    "labels": "train/labels/c/1",
    "conditions": "train/conditions/c/1/0",
    "seeds": "train/seeds/c/1",
    "block_done": "train/block_done/c/1",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "store.zarr"
    write_store(path)
    return path


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of a complete store, to damage."""
    path = tmp_path / "store.zarr"
    shutil.copytree(pristine, path)
    return path


def one_line_naming(exc: pytest.ExceptionInfo[UserError], store: Path, block: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and str(store) in message and block in message, message
    return message


def read_epoch(path: Path) -> None:
    for _ in BlockLoader(SyntheticDataset(open_synthetic(path), "train", resolution=RES), 8, seed=0):
        pass


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# ----------------------------------------------------------------- silent zeros


@pytest.mark.parametrize("array", sorted(BLOCK_1))
def test_deleted_object_is_named_on_open(store: Path, array: str) -> None:
    (store / BLOCK_1[array]).unlink()
    with pytest.raises(UserError) as exc:
        build_dataset("synthetic", root=store, split="train", resolution=RES)
    message = one_line_naming(exc, store, "train block 1")
    assert "damaged" in message and f"{array} " in message and "--overwrite" in message


def test_deleted_object_of_an_object_store_is_named_on_open() -> None:
    url = "memory://cxr-integrity/store.zarr"
    write_store(url)
    fsspec.filesystem("memory").rm("/cxr-integrity/store.zarr/" + BLOCK_1["images"])
    with pytest.raises(UserError, match=r"train block 1 \(images shard missing\)"):
        open_synthetic(url)


def test_empty_image_shard_is_named_on_open(store: Path) -> None:
    (store / BLOCK_1["images"]).write_bytes(b"")  # zarr reads an empty shard as zeros
    with pytest.raises(UserError, match="images shard empty") as exc:
        open_synthetic(store)
    one_line_naming(exc, store, "train block 1")


def test_object_left_out_for_fill_values_is_no_fault(tmp_path: Path) -> None:
    """zarr writes no chunk whose values all equal the fill value (labels 0 here): the block's checksum decides."""
    url = tmp_path / "zeros.zarr"
    attrs = StoreAttrs(
        version=1, setting="0s", classes=("No Finding", "Pneumothorax"),
        counts={"train": {"No Finding": 4, "Pneumothorax": 4}}, resolution=RES, c_dim=1,
        condition_columns=("Pneumothorax",), generator=GeneratorRecord(sha256="0" * 64), seed=0, truncation=1.0,
    )
    writer = SyntheticStoreWriter.open(url, attrs=attrs, overwrite=False, layout=StoreLayout(2, 4))
    images = np.random.default_rng(0).integers(0, 256, size=(8, 1, RES, RES), dtype=np.uint8)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    for k in (0, 1):
        rows = slice(4 * k, 4 * k + 4)
        writer.write_block("train", k, images[rows], labels[rows], labels[rows, None], np.arange(8)[rows])
    writer.finish()
    assert not (url / "train" / "labels" / "c" / "0").exists()  # all zeros: left out by zarr
    split = open_synthetic(url).split("train")
    assert np.array_equal(split.labels, labels) and np.array_equal(split.read_images(0, 8), images)


# ----------------------------------------------------------------- damaged objects at read time


def test_truncated_image_shard_is_one_line_from_the_dataset_and_the_block_loader(store: Path) -> None:
    truncate(store / BLOCK_1["images"], 100)  # the shard index fails its checksum
    ds = build_dataset("synthetic", root=store, split="train", resolution=RES)
    assert ds[0]["image"].shape == (1, RES, RES)  # other blocks still read
    with pytest.raises(UserError, match="images unreadable") as exc:
        ds[20]
    one_line_naming(exc, store, "train block 1")
    with pytest.raises(UserError, match="images unreadable") as exc:
        read_epoch(store)
    one_line_naming(exc, store, "train block 1")


def test_undecodable_image_chunk_is_one_line(store: Path) -> None:
    shard = store / BLOCK_1["images"]
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF  # inside the first chunk's Blosc header
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="blosc") as exc:
        build_dataset("synthetic", root=store, split="train", resolution=RES)[16]
    one_line_naming(exc, store, "train block 1")


def test_block_loader_checks_whole_blocks_against_their_checksums(store: Path) -> None:
    """A shard that still decodes but holds other bytes (here: block 0's shard) fails its block's checksum."""
    (store / BLOCK_1["images"]).write_bytes((store / "train/images/c/0/0/0/0").read_bytes())
    with pytest.raises(UserError, match="does not match its checksum") as exc:
        read_epoch(store)
    one_line_naming(exc, store, "train block 1")


def test_undecodable_labels_are_one_line_on_open(store: Path) -> None:
    (store / BLOCK_1["labels"]).write_bytes(b"not a zstd frame")
    with pytest.raises(UserError, match="labels unreadable") as exc:
        open_synthetic(store)
    one_line_naming(exc, store, "train block 1")


@pytest.mark.parametrize("missing", ["train/images", "val/seeds", "train/block_done"])
def test_missing_array_is_one_line_on_open(store: Path, missing: str) -> None:
    shutil.rmtree(store / missing)
    with pytest.raises(UserError, match=f"lacks the array {missing}") as exc:
        open_synthetic(store)
    one_line_naming(exc, store, missing)


def test_verify_store_finds_every_damaged_block(store: Path) -> None:
    assert verify_store(open_synthetic(store)) == []
    (store / BLOCK_1["images"]).write_bytes((store / "train/images/c/0/0/0/0").read_bytes())
    (store / "val/seeds/c/0").unlink()
    seen = []
    faults = verify_store(open_synthetic(store, check=False), seen.append)
    assert [(f.split, f.block) for f in faults] == [("train", 1), ("val", 0)]
    assert faults[0].reason == "does not match its checksum" and faults[1].reason == "seeds chunk missing"
    assert sum(seen) == sum(SIZES.values())


# ----------------------------------------------------------------- writer faults


def test_reopening_a_damaged_complete_store_marks_its_blocks_pending(store: Path) -> None:
    (store / BLOCK_1["images"]).unlink()
    with pytest.raises(UserError, match="complete but damaged: train block 1 .*rerun the same synth.generate") as exc:
        open_writer(store)
    assert "\n" not in str(exc.value) and "--overwrite" in str(exc.value)
    assert zarr.open_group(str(store), mode="r").attrs["complete"] is False
    resumed = open_writer(store)
    assert resumed.pending_blocks("train") == [1] and resumed.pending_blocks("val") == []
    write_blocks(resumed, "train", [1])
    resumed.finish()
    assert_store_matches(store)


def test_damaged_complete_store_with_other_settings_asks_for_overwrite(store: Path) -> None:
    (store / BLOCK_1["labels"]).unlink()
    with pytest.raises(UserError, match="complete but damaged.*pass --overwrite to replace it"):
        open_writer(store, seed=8)
    assert zarr.open_group(str(store), mode="r").attrs["complete"] is True  # left as it was


@pytest.mark.parametrize("root", [b"{not json", b"", b'{"zarr_format": 3, "node_type": "gro'])
def test_overwrite_replaces_a_store_with_unreadable_root_metadata(store: Path, root: bytes) -> None:
    (store / "zarr.json").write_bytes(root)
    with pytest.raises(UserError, match=r"root metadata \(zarr.json\) of .* is unreadable.*pass --overwrite") as exc:
        open_writer(store)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="cannot open the synthetic store"):
        open_synthetic(store)
    fresh = open_writer(store, overwrite=True)
    assert fresh.pending_blocks("train") == [0, 1, 2]
    for split in SIZES:
        write_pending_blocks(fresh, split, content_rows(split))
    fresh.finish()
    assert_store_matches(store)


def test_unreadable_root_metadata_beside_foreign_files_is_not_replaced(store: Path) -> None:
    (store / "zarr.json").write_bytes(b"{not json")
    (store / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing to replace it"):
        open_writer(store, overwrite=True)
    assert (store / "notes.txt").exists() and (store / BLOCK_1["images"]).exists()


def test_full_disk_while_writing_a_block_leaves_it_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = tmp_path / "s.zarr"
    writer = open_writer(url)
    write_blocks(writer, "train", [0])
    fill_disk_at(monkeypatch, "train/conditions/c/1")
    with pytest.raises(UserError, match="train block 1 .*No space left on device; the block stays pending") as exc:
        write_blocks(writer, "train", [1])
    assert "\n" not in str(exc.value) and str(url) in str(exc.value)
    monkeypatch.undo()
    assert not list(url.rglob("*.partial"))
    resume_and_finish(url, [1, 2])


def test_resuming_with_another_layout_is_refused(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    write_blocks(open_writer(url), "train", [0])
    with pytest.raises(UserError, match="blocks of 16 images .*--block-size 16") as exc:
        open_writer(url, layout=StoreLayout(chunk_images=4, block_size=8))
    assert "\n" not in str(exc.value)
    resumed = SyntheticStoreWriter.open(url, attrs=make_attrs(), overwrite=False)  # no layout: the store's own
    assert resumed.block_size("train") == LAYOUT.block_size and resumed.pending_blocks("train") == [1, 2]
