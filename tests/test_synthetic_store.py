"""Synthetic Zarr stores: schema, writer (resume, refusals, kill safety), reader, registry entry, block loader.

Integrity faults (damaged or missing objects, full disks, root metadata) are in
``tests/test_synthetic_store_integrity.py``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from zarr.storage import LocalStore

from datasets.block_loader import BlockLoader, BlockStream
from datasets.findings import CHEXPERT
from datasets.label_tasks import assign_classes, label_task
from datasets.registry import build_dataset
from datasets.synthetic import SyntheticDataset
from datasets.synthetic_store.format import GeneratorRecord, StoreAttrs, StoreLayout
from datasets.synthetic_store.reader import open_synthetic
from datasets.synthetic_store.writer import BlockRows, SyntheticStoreWriter, write_pending_blocks
from plumbing.errors import UserError

REPO = Path(__file__).resolve().parents[1]
RES = 32
SIZES = {"train": 40, "val": 10}
LAYOUT = StoreLayout(chunk_images=4, block_size=16)  # train: blocks of 16, 16, 8; val: one block of 10
PTX = CHEXPERT.index("Pneumothorax")


def make_attrs(seed: int = 7) -> StoreAttrs:
    return StoreAttrs(
        version=1,
        setting="0s",
        classes=("No Finding", "Pneumothorax"),
        counts={"train": {"No Finding": 20, "Pneumothorax": 20}, "val": {"No Finding": 5, "Pneumothorax": 5}},
        resolution=RES,
        c_dim=len(CHEXPERT.columns),
        condition_columns=CHEXPERT.columns,
        generator=GeneratorRecord(sha256="0" * 64, config={"resolution": RES}, training={}, trained_on_phantoms=True),
        seed=seed,
        truncation=1.0,
    )


def make_content(seed: int = 7) -> dict[str, tuple[np.ndarray, ...]]:
    """Per split: images uint8 [N,1,R,R], labels (alternating classes), conditions, seeds."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in SIZES.items():
        labels = np.arange(n) % 2
        conditions = np.zeros((n, len(CHEXPERT.columns)), np.float32)
        conditions[labels == 1, PTX] = 1.0
        images = rng.integers(0, 256, size=(n, 1, RES, RES), dtype=np.uint8)
        out[split] = (images, labels.astype(np.int64), conditions, 1000 + np.arange(n, dtype=np.int64))
    return out


CONTENT = make_content()


def open_writer(
    url: str | Path, *, seed: int = 7, overwrite: bool = False, layout: StoreLayout = LAYOUT
) -> SyntheticStoreWriter:
    return SyntheticStoreWriter.open(url, attrs=make_attrs(seed), overwrite=overwrite, layout=layout)


def content_rows(split: str) -> Callable[[int, int], BlockRows]:
    """Rows ``[start, stop)`` of :data:`CONTENT`'s ``split``, as :func:`write_pending_blocks` asks for them."""
    return lambda start, stop: tuple(part[start:stop] for part in CONTENT[split])


def write_blocks(writer: SyntheticStoreWriter, split: str, blocks: list[int]) -> None:
    images, labels, conditions, seeds = CONTENT[split]
    for k in blocks:
        s, e = writer.block_range(split, k)
        writer.write_block(split, k, images[s:e], labels[s:e], conditions[s:e], seeds[s:e])


def write_store(url: str | Path, layout: StoreLayout = LAYOUT) -> None:
    writer = open_writer(url, layout=layout)
    for split in SIZES:
        write_pending_blocks(writer, split, content_rows(split))
    writer.finish()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "store.zarr"
    write_store(path)
    return path


def assert_store_matches(url: str | Path) -> None:
    store = open_synthetic(url)
    for split, (images, labels, conditions, seeds) in CONTENT.items():
        part = store.split(split)
        assert np.array_equal(part.read_images(0, len(part)), images)
        assert np.array_equal(part.labels, labels)
        assert np.array_equal(part.conditions, conditions)
        assert np.array_equal(part.seeds, seeds)


# ----------------------------------------------------------------- schema and reading


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, key_prefix: str) -> None:
    """Make writes of store objects whose key starts with ``key_prefix`` fail as on a full disk (ENOSPC)."""
    original = LocalStore.set

    async def full_disk(self: LocalStore, key: str, value: object) -> None:
        if key.startswith(key_prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full_disk)


def resume_and_finish(url: Path, pending_train: list[int]) -> None:
    """Reopen an interrupted store, check its pending training blocks, write every pending block and finish."""
    resumed = open_writer(url)
    assert resumed.pending_blocks("train") == pending_train
    for split in SIZES:
        write_pending_blocks(resumed, split, content_rows(split))
    resumed.finish()
    assert_store_matches(url)


def test_round_trip_and_plain_zarr(store_path: Path) -> None:
    assert_store_matches(store_path)
    group = zarr.open_group(str(store_path), mode="r")
    assert group.attrs["format"] == "cxr-synthetic" and group.attrs["format_version"] == 1
    assert group.attrs["complete"] is True and group.attrs["resolution"] == RES
    assert set(group.attrs["library_versions"]) == {"torch", "zarr", "numpy", "project"}
    images = group["train/images"]
    assert images.shape == (40, 1, RES, RES) and images.dtype == np.uint8
    assert images.chunks == (4, 1, RES, RES) and images.shards == (16, 1, RES, RES)
    (codec,) = images.compressors
    assert (codec.cname.value, codec.shuffle.value) == ("lz4", "bitshuffle")
    assert group["val/conditions"].shape == (10, 14) and group["val/conditions"].dtype == np.float32
    assert group["train/labels"].dtype == np.int64 and group["train/seeds"].dtype == np.int64


def test_root_attributes_are_a_strict_record_written_as_read(store_path: Path) -> None:
    """The root attributes read back as the record written; optional keys left at None are not written."""
    raw = dict(zarr.open_group(str(store_path), mode="r").attrs)
    attrs = open_synthetic(store_path).attrs
    assert attrs == StoreAttrs.from_dict(raw) and list(attrs.to_dict().items()) == list(raw.items())
    assert attrs.generator == make_attrs().generator and attrs.classes == ("No Finding", "Pneumothorax")
    assert attrs.complete is True and attrs.format_version == 1 and attrs.split_sizes == SIZES
    assert not {"condition_policy", "condition_source", "truncation_center"} & set(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"unknown root attribute record keys \['colour'\]"),
        ({"seed": None}, r"root attribute record lacks the keys \['seed'\]"),
        ({"generator": {"sha256": "0" * 64, "weights": 1}}, r"unknown generator record keys \['weights'\]"),
    ],
)
def test_root_attributes_outside_the_record_are_refused(
    store_path: Path, tmp_path: Path, change: dict, message: str
) -> None:
    url = tmp_path / "s.zarr"
    shutil.copytree(store_path, url)
    root = json.loads((url / "zarr.json").read_text())
    attrs = {**root["attributes"], **change}
    root["attributes"] = {key: value for key, value in attrs.items() if value is not None}
    (url / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(UserError, match=f"cannot open the synthetic store {re.escape(str(url))}: .*{message}") as exc:
        open_synthetic(url)
    assert "\n" not in str(exc.value)


def test_write_pending_blocks_writes_each_pending_block_once(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    writer = open_writer(url)
    write_blocks(writer, "train", [1])
    asked, progress = [], []

    def rows(start: int, stop: int) -> BlockRows:
        asked.append((start, stop))
        return content_rows("train")(start, stop)

    assert writer.pending_images("train") == 24
    assert write_pending_blocks(writer, "train", rows, progress.append) == 24
    assert asked == [(0, 16), (32, 40)] and progress == [16, 8] and writer.pending_blocks("train") == []
    assert write_pending_blocks(writer, "train", rows) == 0 and len(asked) == 2  # nothing left
    write_pending_blocks(writer, "val", content_rows("val"))
    writer.finish()
    assert_store_matches(url)


def test_default_layout_by_resolution() -> None:
    assert StoreLayout.for_resolution(64) == StoreLayout(256, 1024)
    assert StoreLayout.for_resolution(128) == StoreLayout(64, 1024)
    assert StoreLayout.for_resolution(256) == StoreLayout(16, 256)
    assert StoreLayout.for_resolution(512) == StoreLayout(4, 64)
    assert StoreLayout.for_resolution(1024) == StoreLayout(1, 16)


def test_dataset_samples(store_path: Path) -> None:
    ds = SyntheticDataset(open_synthetic(store_path), "valid", resolution=RES)
    images, labels, _, _ = CONTENT["val"]
    sample = ds[3]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, RES, RES)
    assert torch.equal((sample["image"] * 255).round().to(torch.uint8), torch.from_numpy(images[3]))
    assert sample["label"] == 1 and sample["id"] == "val/000003"
    # findings: the condition vector with "No Finding" restored, so the task policy gives the classes back
    findings = ds.findings.numpy()
    assert findings[3, PTX] == 1 and findings[3, CHEXPERT.index("No Finding")] == 0
    assert findings[2, CHEXPERT.index("No Finding")] == 1 and np.nansum(findings[2]) == 1
    assert np.array_equal(assign_classes(findings, CHEXPERT, label_task(1, "0s")), labels)
    batch = ds.__getitems__([9, 0, 4])
    assert [s["id"] for s in batch] == ["val/000009", "val/000000", "val/000004"]
    small = SyntheticDataset(open_synthetic(store_path), "train", resolution=16)
    assert small[0]["image"].shape == (1, 16, 16)


def test_registered_data_set(store_path: Path) -> None:
    ds = build_dataset("synthetic", root=store_path, split="val", resolution=RES)
    assert len(ds) == 10 and ds[0]["findings"].shape == (14,)
    assert len(build_dataset("synthetic", root=store_path, task=label_task(1, "0s"), resolution=RES)) == 40
    with pytest.raises(UserError, match="cannot serve task v3-Xs"):
        build_dataset("synthetic", root=store_path, task=label_task(3, "Xs"))
    augmented = build_dataset("synthetic", root=store_path, split="val", resolution=RES, augment=True)[0]["image"]
    assert augmented.shape == (1, RES, RES) and 0 <= augmented.min() and augmented.max() <= 1


def test_memory_url_round_trip() -> None:
    url = "memory://cxr-tests/store.zarr"
    write_store(url)
    assert_store_matches(url)


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no synthetic store"):
        open_synthetic(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        open_writer(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").exists()
    with pytest.raises(UserError, match="cannot open the synthetic store nosuch://x"):
        open_synthetic("nosuch://x")
    damaged = tmp_path / "damaged.zarr"
    damaged.mkdir()
    (damaged / "zarr.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot open the synthetic store"):
        open_synthetic(damaged)


# ----------------------------------------------------------------- resume and refusals


def test_incomplete_store_is_refused_and_resumes(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    writer = open_writer(url)
    assert writer.block_size("train") == 16 and writer.pending_blocks("train") == [0, 1, 2]
    write_blocks(writer, "train", [0, 2])
    message = r"is incomplete \(generation was interrupted\); rerun the same synth.generate command to resume"
    with pytest.raises(UserError, match=message):
        open_synthetic(url)
    resumed = open_writer(url)
    assert resumed.pending_blocks("train") == [1] and resumed.pending_blocks("val") == [0]
    with pytest.raises(ValueError, match="pending"):
        resumed.finish()
    write_blocks(resumed, "train", [1])
    write_blocks(resumed, "val", [0])
    resumed.finish()
    assert_store_matches(url)


def test_refusals_and_overwrite(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    write_blocks(open_writer(url), "train", [0])
    with pytest.raises(UserError, match=r"seed differ\); use --overwrite"):
        open_writer(url, seed=8)
    fresh = open_writer(url, seed=8, overwrite=True)
    assert fresh.pending_blocks("train") == [0, 1, 2]
    for split in SIZES:
        write_pending_blocks(fresh, split, content_rows(split))
    fresh.finish()
    with pytest.raises(UserError, match="already complete; pass --overwrite"):
        open_writer(url, seed=8)
    assert open_writer(url, overwrite=True).pending_blocks("val") == [0]


def test_interrupted_block_write_stays_pending(tmp_path: Path) -> None:
    """A failure after a block's data but before its marker leaves the block pending; a resume rewrites it."""
    url = tmp_path / "s.zarr"
    writer = open_writer(url)
    write_blocks(writer, "train", [0, 1])

    class Killed(Exception):
        pass

    class FailingArray:
        def __setitem__(self, key: object, value: object) -> None:
            raise Killed

    writer._arrays["train"].seeds = FailingArray()  # the last data write of a block
    with pytest.raises(Killed):
        write_blocks(writer, "train", [1])  # rewriting a done block clears its marker first
    (url / "train" / "images" / "c" / "2" / "0" / "0" / "0.0123.partial").parent.mkdir(parents=True)
    (url / "train" / "images" / "c" / "2" / "0" / "0" / "0.0123.partial").write_bytes(b"torn")
    resume_and_finish(url, [1, 2])
    assert not list(url.rglob("*.partial"))


def test_finish_detects_a_damaged_block(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    writer = open_writer(url)
    for split in SIZES:
        write_pending_blocks(writer, split, content_rows(split))
    shards = url / "train" / "images" / "c"
    (shards / "1" / "0" / "0" / "0").write_bytes((shards / "0" / "0" / "0" / "0").read_bytes())
    with pytest.raises(UserError, match="failed verification"):
        writer.finish()
    assert open_writer(url).pending_blocks("train") == [1]


SMALL_BLOCKS = StoreLayout(chunk_images=2, block_size=2)  # 20 train blocks: a kill lands mid-way
KILL_CHILD = textwrap.dedent(
    """
    import random, sys, time
    sys.path.insert(0, {tests!r})
    from test_synthetic_store import SMALL_BLOCKS, content_rows, open_writer
    from datasets.synthetic_store.writer import write_pending_blocks
    writer = open_writer({url!r}, layout=SMALL_BLOCKS)
    write_pending_blocks(writer, "train", content_rows("train"), lambda n: time.sleep(random.uniform(0.0, 0.002)))
    time.sleep(60)
    """
)


@pytest.mark.slow
def test_sigkill_mid_generation_then_resume(tmp_path: Path) -> None:
    """Kill a writing process at a random moment, resume, and compare with an uninterrupted store."""
    url = tmp_path / "killed.zarr"
    child = KILL_CHILD.format(tests=str(Path(__file__).parent), url=str(url))
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    markers = url / "train" / "block_done" / "c"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not (markers.is_dir() and any(markers.iterdir())):
        time.sleep(0.002)
    time.sleep(np.random.default_rng().uniform(0.0, 0.02))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    with pytest.raises(UserError, match="incomplete"):
        open_synthetic(url)
    resumed = open_writer(url, layout=SMALL_BLOCKS)
    assert 0 < len(resumed.pending_blocks("train")) + len(resumed.pending_blocks("val")) < 25
    for split in SIZES:
        write_pending_blocks(resumed, split, content_rows(split))
    resumed.finish()
    assert_store_matches(url)
    write_store(tmp_path / "reference.zarr", layout=SMALL_BLOCKS)
    ref, got = zarr.open_group(str(tmp_path / "reference.zarr"), mode="r"), zarr.open_group(str(url), mode="r")
    for split in SIZES:
        for name in ("images", "labels", "conditions", "seeds", "block_done"):
            assert np.array_equal(ref[f"{split}/{name}"][:], got[f"{split}/{name}"][:])


# ----------------------------------------------------------------- block loader


def epoch_ids(loader: BlockLoader, epoch: int) -> list[str]:
    loader.set_epoch(epoch)
    return [i for batch in loader for i in batch["id"]]


def test_block_loader_epochs(store_path: Path) -> None:
    ds = SyntheticDataset(open_synthetic(store_path), "train", resolution=RES)
    loader = BlockLoader(ds, 6, seed=3, read_size=4, buffer_size=8)
    everything = sorted(f"train/{i:06d}" for i in range(40))
    e0, e1 = epoch_ids(loader, 0), epoch_ids(loader, 1)
    assert sorted(e0) == everything and sorted(e1) == everything
    assert e0 != e1 and e0 != everything
    assert epoch_ids(BlockLoader(ds, 6, seed=3, read_size=4, buffer_size=8), 0) == e0
    assert epoch_ids(BlockLoader(ds, 6, seed=4, read_size=4, buffer_size=8), 0) != e0
    loader.set_epoch(0)
    batches = list(loader)
    assert len(loader) == len(batches) == 7 and [len(b["id"]) for b in batches][:-1] == [6] * 6
    images, labels, _, _ = CONTENT["train"]
    first = batches[0]
    idx = [int(i.split("/")[1]) for i in first["id"]]
    assert first["image"].shape == (6, 1, RES, RES) and first["image"].dtype == torch.float32
    assert torch.equal((first["image"] * 255).round().to(torch.uint8), torch.from_numpy(images[idx]))
    assert first["label"].tolist() == labels[idx].tolist()


def test_block_loader_prefetch_gives_the_same_batches(store_path: Path) -> None:
    ds = SyntheticDataset(open_synthetic(store_path), "train", resolution=RES, augment=True)
    runs = []
    for prefetch in (0, 1, 3):
        loader = BlockLoader(ds, 6, seed=2, read_size=4, buffer_size=8, prefetch=prefetch)
        loader.set_epoch(1)
        runs.append(list(loader))
    for other in runs[1:]:
        assert [b["id"] for b in other] == [b["id"] for b in runs[0]]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(runs[0], other, strict=True))
    with pytest.raises(ValueError, match="prefetch"):
        BlockLoader(ds, 6, prefetch=-1)


def test_block_loader_device_path(store_path: Path) -> None:
    ds = SyntheticDataset(open_synthetic(store_path), "train", resolution=RES)
    on_host = epoch_ids(BlockLoader(ds, 6, seed=3, read_size=4, buffer_size=8, device="cpu"), 0)
    assert on_host == epoch_ids(BlockLoader(ds, 6, seed=3, read_size=4, buffer_size=8), 0)
    # Another device: the uint8 batch is copied and finished (augmented too) there; the meta device stands in for a GPU.
    augmented = SyntheticDataset(open_synthetic(store_path), "train", resolution=RES, augment=True)
    for prefetch, source in ((0, ds), (2, augmented)):
        loader = BlockLoader(source, 6, seed=3, read_size=4, buffer_size=8, device="meta", prefetch=prefetch)
        batches = list(loader)
        assert [i for b in batches for i in b["id"]] == on_host
        first = batches[0]
        assert first["image"].device.type == "meta" and first["image"].dtype == torch.float32
        assert first["image"].shape == (6, 1, RES, RES) and first["label"].device.type == "meta"


def test_set_epoch_during_a_pass_waits_for_the_next_one(store_path: Path) -> None:
    ds = SyntheticDataset(open_synthetic(store_path), "train", resolution=RES)
    expected = epoch_ids(BlockLoader(ds, 6, seed=3, read_size=4, buffer_size=8), 0)
    for prefetch in (0, 2):
        loader = BlockLoader(ds, 6, seed=3, read_size=4, buffer_size=8, prefetch=prefetch)
        loader.set_epoch(0)
        ids = []
        for batch in loader:
            ids += batch["id"]
            loader.set_epoch(1)  # e.g. an epoch handler that fires mid-pass
        assert ids == expected and loader.epoch == 1


def test_block_loader_workers_and_ranks(store_path: Path) -> None:
    ds = SyntheticDataset(open_synthetic(store_path), "train", resolution=RES)
    everything = sorted(f"train/{i:06d}" for i in range(40))
    with_workers = BlockLoader(ds, 5, seed=1, num_workers=2, read_size=4, buffer_size=8)
    ids = epoch_ids(with_workers, 2)
    assert sorted(ids) == everything and len(with_workers) == 9  # streams of 24 and 16 rows
    ranks = [BlockLoader(ds, 4, seed=1, read_size=8, rank=r, world_size=2, drop_last=True) for r in (0, 1)]
    per_rank = [epoch_ids(r, 0) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == 16 and not set(per_rank[0]) & set(per_rank[1])
    assert len(ranks[0]) == len(ranks[1]) == 4
    stream = BlockStream(ds, 8)
    assert stream.read_size == 16  # the store's block: one shard object per read
