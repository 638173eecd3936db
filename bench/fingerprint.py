"""Fingerprint of what the main commands write, to check that a refactoring changes no result.

Runs, on a 2-core CPU in about two minutes, a small ``synth.generate`` store, a tiny
``evaluate.finetune``, one ``adapt.train`` cell from that store and one ``ssl.curriculum run``
on phantoms, then prints SHA-256 digests of what they wrote: every array chunk and metadata
file of the store and its contact sheet; for each exported ``.safetensors`` file one line for its
``tensors`` and one for its ``metadata``; for each ``results.json`` one line for its ``figures``
(every number in it, with its place) and one for the whole ``record``. Records and metadata are
compared without the fields that legitimately differ between runs (wall-clock times, absolute
paths, command lines, creation dates, file hashes). Two checkouts that print the same lines wrote
the same results; where only ``record`` or ``metadata`` lines differ, the figures and weights are
the same and only what is written beside them changed::

    python -m bench.fingerprint --out /tmp/before > before.txt
    python -m bench.fingerprint --out /tmp/after > after.txt && diff before.txt after.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from evaluate.plots import ADAPTATION_CURVES, CONFUSION, PRETEXT_CURVES

VOLATILE = ("time", "seconds", "duration", "command", "path", "root", "store", "file", "dir", "host", "date", "started",
            "finished", "created", "sha256", "version_info", "python", "torch")
PLOTS = (ADAPTATION_CURVES, CONFUSION, PRETEXT_CURVES)
"""matplotlib's pictures of figures that results.json holds (hashed there): their bytes follow the font library."""


def _run(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _stable(value: object) -> object:
    """``value`` without the fields that name times, paths or commands."""
    if isinstance(value, dict):
        return {key: _stable(item) for key, item in sorted(value.items())
                if not any(word in key.lower() for word in VOLATILE)}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _stable_text(value: object, out: Path) -> str:
    """``value`` as canonical JSON, without volatile fields, with the scratch folder written ``<out>``."""
    return json.dumps(_stable(value), sort_keys=True).replace(str(out), "<out>")


def _figures(value: object, place: str = "") -> list[str]:
    """Every number (booleans too) in a JSON value, as ``place=value`` lines in document order."""
    if isinstance(value, dict):
        return [line for key, item in value.items() for line in _figures(item, f"{place}/{key}")]
    if isinstance(value, list):
        return [line for i, item in enumerate(value) for line in _figures(item, f"{place}[{i}]")]
    return [f"{place}={value!r}"] if isinstance(value, int | float) else []


def _weights_digests(path: Path, out: Path) -> tuple[str, str]:
    """Digests of a safetensors file's tensors (name, dtype, shape, bytes) and of its stable metadata."""
    digest = hashlib.sha256()
    with safe_open(path, framework="pt") as file:
        meta = {key: _json_or_text(value) for key, value in (file.metadata() or {}).items()}
        for name in sorted(file.keys()):
            tensor = file.get_tensor(name).contiguous().reshape(-1)
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16], _digest(_stable_text(meta, out).encode())


def fingerprint(out: Path) -> list[str]:
    """Run the four commands under ``out`` and return one ``name digest`` line per output file."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    store, runs = out / "v3-0s.zarr", out / "runs"
    _run("synth.generate", "--version", "3", "--setting", "0s", "--train-per-class", "24", "--val-per-class", "8",
         "--block-size", "16", "--out", str(store), "--device", "cpu")
    _run("evaluate.finetune", "--data", "phantom", "--length", "64", "--eval-length", "32", "--backbone", "tiny",
         "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--lr", "0.001", "--name", "ft",
         "--no-progress", "--runs-dir", str(runs), "--device", "cpu")
    _run("adapt.train", "--source", "synthetic", "--source-store", str(store), "--target", "phantom-nih", "--version",
         "3", "--setting", "0s", "--alignment", "dcan", "--backbone", "resnet18", "--image-size", "32",
         "--batch-size", "8", "--lr", "0.003", "--steps", "4", "--eval-every", "2", "--target-length", "64",
         "--eval-length", "32", "--name", "ad", "--no-progress", "--runs-dir", str(runs), "--device", "cpu")
    _run("ssl.curriculum", "run", "--data", "phantom", "--max-images", "64", "--downstream", "phantom", "--version",
         "3", "--setting", "0s", "--length", "64", "--eval-length", "32", "--backbone", "tiny", "--image-size", "32",
         "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--downstream-lr-grid", "0.001", "--tasks",
         "rotation,moco", "--no-singles", "--no-progress", "--runs-dir", str(runs), "--device", "cpu")
    lines = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = path.relative_to(out).as_posix()
        if path.name == "results.json":
            record = json.loads(path.read_text())
            lines.append(f"{name} figures {_digest(chr(10).join(_figures(_stable(record))).encode())}")
            lines.append(f"{name} record {_digest(_stable_text(record, out).encode())}")
        elif path.name == "zarr.json":
            lines.append(f"{name} {_digest(_stable_text(json.loads(path.read_text()), out).encode())}")
        elif path.suffix == ".safetensors":
            tensors, metadata = _weights_digests(path, out)
            lines += [f"{name} tensors {tensors}", f"{name} metadata {metadata}"]
        elif store in path.parents or path.suffix == ".png" and "tb" not in path.parts and path.name not in PLOTS:
            lines.append(f"{name} {_digest(path.read_bytes())}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fingerprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (replaced)")
    for line in fingerprint(parser.parse_args(argv).out):
        print(line)


if __name__ == "__main__":
    main()
