#!/usr/bin/env bash
# Every GPU benchmark of the project in one call, ending in one table.
#
#   bench/gpu_wheels.sh   # once, where PyPI is reachable: wheels the GPU machine lacks -> .whl/
#   bench/gpu.sh          # on the GPU machine, from the repository root (about 5 minutes on one H200)
#
# Where those packages are missing, the wheels in .whl/ are installed into a scratch folder first, so a bare
# machine with Python, torch and torchvision needs no network. Rows:
#   * GAN training s/kimg, paper preset, 256 px, batch 64, ADA p = 0.5, lazy R1, bf16 (bench.synth);
#   * generation into a Zarr store, img/s at 256 px (bench.synth);
#   * reading a store through the block loader delivering to the GPU, img/s at 256 px (bench.read_store);
#   * classifier training, ResNet-50 at 256 px, batch 128, bf16: img/s of the model step alone and through the
#     block loader from a store, and their ratio (bench.finetune);
#   * domain adaptation, ResNet-50 at 224 px, 36 + 36 images, bf16: img/s of the DCAN step and of a plain
#     classifier step on the same images, and their ratio (bench.adapt);
#   * pretext steps, MoCo v2 and SwAV, ResNet-50 at 224 px, batch 256, bf16: img/s of the step alone and through
#     the block loader from a store, and their ratio (bench.ssl);
#   * the tests marked gpu (pytest -m gpu).
# CXR_BENCH_DEVICE=cpu CXR_BENCH_QUICK=1 bench/gpu.sh runs the same script in a minute on a CPU (a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEVICE="${CXR_BENCH_DEVICE:-cuda}"
if ! "$PY" -c "import monai, ignite, zarr, torchxrayvision, pydicom, matplotlib" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    SITE="$(mktemp -d)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ROWS="$(mktemp)"
if [ -n "${CXR_BENCH_QUICK:-}" ]; then
    SYNTH=(--resolution 32 --preset tiny --batch-size 8 --steps 2 --warmup 1 --gen-images 64 --gen-batch 32)
    READ=(--n 256 --resolutions 32 --repeats 1)
    FINETUNE=(--backbone tiny --image-size 32 --batch-size 16 --steps 3 --repeats 1 --warmup 1 --store-images 128)
    ADAPT=(--backbone resnet18 --image-size 32 --batch-size 4 --steps 2 --repeats 1 --warmup 1)
    SSL=(--backbone tiny --image-size 32 --batch-size 16 --steps 2 --repeats 1 --warmup 1 --images 64)
else
    SYNTH=(--resolution 256 --preset paper --batch-size 64 --steps 20 --warmup 5 --gen-images 4096 --gen-batch 128)
    READ=(--n 8192 --resolutions 256 --repeats 3 --workers 8)
    FINETUNE=(--backbone resnet50 --image-size 256 --batch-size 128 --steps 15 --repeats 3 --warmup 10 --store-images 2048)
    ADAPT=(--backbone resnet50 --image-size 224 --batch-size 36 --steps 20 --repeats 3 --warmup 5)
    SSL=(--backbone resnet50 --image-size 224 --batch-size 256 --steps 10 --repeats 3 --warmup 3 --images 4096 --workers 8)
fi
"$PY" -m bench.synth --device "$DEVICE" "${SYNTH[@]}" --rows-out "$ROWS"
"$PY" -m bench.read_store --device "$DEVICE" "${READ[@]}" --rows-out "$ROWS"
"$PY" -m bench.finetune --device "$DEVICE" "${FINETUNE[@]}" --rows-out "$ROWS"
"$PY" -m bench.adapt --device "$DEVICE" "${ADAPT[@]}" --rows-out "$ROWS"
"$PY" -m bench.ssl --device "$DEVICE" "${SSL[@]}" --rows-out "$ROWS"
set +e
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -3
TESTS=$?
set -e
"$PY" -m bench.table "$ROWS" --device "$DEVICE"
exit "$TESTS"
