"""Synthetic stores on S3, against a real local S3 server (moto's server mode on 127.0.0.1, as s3fs's own tests do).

``synth.generate`` writes through fsspec and s3fs; the endpoint comes from
``--storage-option endpoint_url=...`` and the credentials from the usual
environment variables. A store on S3 must read back equal to the same store
written to a local disk, resume after a killed generation, refuse a deleted
object in one line and feed the block loader with its read-ahead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec.config
import numpy as np
import pytest
import torch

from datasets.block_loader import BlockLoader
from datasets.synthetic import SyntheticDataset
from datasets.synthetic_store.reader import open_synthetic
from plumbing.cli import run_cli
from plumbing.errors import UserError
from plumbing.storage import apply_storage_options, missing_file_system, parse_storage_options, remote_protocols
from synth.generate import main as generate
from tests.test_synth_generate import REPO, _generator_file

s3fs = pytest.importorskip("s3fs", reason="s3fs is part of the test extra: pip install -e '.[test]'")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is part of the test extra")

BUCKET = "cxr-stores"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SMALL = ["--train-per-class", "24", "--val-per-class", "4", "--block-size", "4", "--device", "cpu",
         "--version", "1", "--setting", "0s"]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket; fsspec's S3 configuration and environment restored after."""
    saved_env = {k: os.environ.get(k) for k in [*CREDENTIALS, "FSSPEC_S3"]}
    saved_conf = dict(fsspec.config.conf.get("s3", {}))
    os.environ.update(CREDENTIALS)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3fs.S3FileSystem(endpoint_url=url, skip_instance_cache=True).mkdir(BUCKET)
    yield url
    server.stop()
    fsspec.config.conf["s3"] = saved_conf
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def gen_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generator_file(tmp_path_factory.mktemp("gen") / "g.safetensors")


@pytest.fixture(scope="module")
def local_store(gen_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "v3-Xs.zarr"
    generate(["--generator", str(gen_file), "--out", str(out), *SMALL])
    return out


@pytest.fixture(scope="module")
def s3_store(endpoint: str, gen_file: Path) -> str:
    url = f"s3://{BUCKET}/written.zarr"
    generate(["--generator", str(gen_file), "--out", url, *SMALL, "--storage-option", f"endpoint_url={endpoint}"])
    return url


def _bucket(endpoint: str) -> s3fs.S3FileSystem:
    """A fresh client (no listing cache), as another machine would see the bucket."""
    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)


def _same_content(a: str | Path, b: str | Path) -> None:
    ra, rb = open_synthetic(a), open_synthetic(b)
    for split in ("train", "val"):
        x, y = ra.split(split), rb.split(split)
        assert np.array_equal(x.read_images(0, len(x)), y.read_images(0, len(y)))
        for key in ("labels", "conditions", "seeds"):
            assert np.array_equal(getattr(x, key), getattr(y, key))


def test_a_store_written_to_s3_reads_back_equal_to_the_local_one(
    endpoint: str, s3_store: str, local_store: Path
) -> None:
    _same_content(s3_store, local_store)
    assert _bucket(endpoint).exists(f"{BUCKET}/written-contact.png")


@pytest.mark.slow
def test_a_generation_killed_on_s3_resumes_to_the_uninterrupted_store(
    endpoint: str, gen_file: Path, local_store: Path
) -> None:
    url = f"s3://{BUCKET}/killed.zarr"
    command = [sys.executable, "-m", "synth.generate", "--generator", str(gen_file), "--out", url, *SMALL,
               "--storage-option", f"endpoint_url={endpoint}"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = f"{BUCKET}/killed.zarr/train/block_done/c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        fs = _bucket(endpoint)
        if fs.exists(done) and len(fs.ls(done)) >= 5:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(UserError, match="incomplete"):
        open_synthetic(url)
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=300)
    _same_content(url, local_store)


def test_a_deleted_object_on_s3_is_refused_in_one_line(endpoint: str, gen_file: Path) -> None:
    url = f"s3://{BUCKET}/damaged.zarr"
    generate(["--generator", str(gen_file), "--out", url, "--train-per-class", "4", "--val-per-class", "1",
              "--block-size", "4", "--device", "cpu", "--storage-option", f"endpoint_url={endpoint}"])
    _bucket(endpoint).rm(f"{BUCKET}/damaged.zarr/train/labels/c/1")
    with pytest.raises(UserError) as exc:
        open_synthetic(url)
    message = str(exc.value)
    assert "\n" not in message and url in message and "train block 1" in message and "labels" in message


def test_the_block_loader_reads_a_store_on_s3_as_it_reads_a_local_one(s3_store: str, local_store: Path) -> None:

    def epoch(where: str | Path) -> list[torch.Tensor]:
        loader = BlockLoader(SyntheticDataset(open_synthetic(where), "train", resolution=32), 8, seed=3, prefetch=2)
        return [batch["image"] for batch in loader]

    got, want = epoch(s3_store), epoch(local_store)
    assert len(got) == len(want) > 1
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_a_missing_file_system_package_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    error = missing_file_system("s3://bucket/x.zarr", ImportError("Install s3fs to access S3"))
    assert str(error) == "s3://bucket/x.zarr: s3:// needs s3fs, which is not installed (pip install '.[s3]')"
    with pytest.raises(SystemExit) as exit_info:  # gcsfs is not a dependency: the same line through a command
        run_cli(generate, ["--out", "gcs://bucket/x.zarr", "--train-per-class", "1", "--val-per-class", "1",
                           "--device", "cpu"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "gcs:// needs a package that is not installed: " in errors[0]


def test_storage_options_are_parsed_and_go_to_the_urls_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_storage_options(["endpoint_url=http://h:9000", "anon=true", "client_kwargs={\"a\": 1}"]) == {
        "endpoint_url": "http://h:9000", "anon": True, "client_kwargs": {"a": 1}}
    assert remote_protocols(["s3://b/x", Path("local"), "file:///tmp/x", None, "memory://m", "s3://c"]) == [
        "s3", "memory"]
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_storage_options(["endpoint_url"])
    with pytest.raises(UserError, match="object-store URLs"):
        apply_storage_options(["anon=true"], ["runs/store.zarr", None])
    monkeypatch.setitem(fsspec.config.conf, "memory", {})
    monkeypatch.setenv("FSSPEC_MEMORY", "{}")
    apply_storage_options(["probe=1"], ["memory://m/x.zarr"])
    assert fsspec.config.conf["memory"] == {"probe": 1} and os.environ["FSSPEC_MEMORY"] == '{"probe": 1}'
