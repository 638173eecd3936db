#!/usr/bin/env bash
# Download, into .whl/, the wheels that bench/gpu.sh installs on a GPU machine
# whose Python (3.12) already has torch, torchvision, numpy, pandas, pillow,
# scikit-image, safetensors, tensorboard, tqdm, fsspec and python-dateutil but not these.
# Run it on a machine that reaches PyPI; bench/gpu.sh then needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${PY_VERSION:-3.12}"
WHEELS=(
    "monai==1.6.1"
    "pytorch-ignite==0.5.5"
    "zarr==3.1.6"
    "numcodecs==0.16.6"
    "donfig==0.8.1.post1"
    "google-crc32c==1.9.0"
    "torchxrayvision==1.5.7"
    "pydicom==3.0.2"
    "matplotlib==3.11.2"
    "contourpy==1.3.3"
    "cycler==0.12.1"
    "fonttools==4.69.1"
    "kiwisolver==1.5.1"
    "pyparsing==3.3.3"
)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
du -sh .whl
