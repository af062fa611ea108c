#!/usr/bin/env bash
# Worker vs each model's bare forward loop on one CUDA GPU: EfficientNet-Lite0, ResNet-50 and
# InceptionResNetV2 at batch 256 with AMP (bf16/fp16) and channels_last in both loops.
# Writes the "worker-gpu" section of docs/BENCHMARKS.md. A few minutes on a recent GPU.
#
# STATUS: written without a GPU and NOT RUN yet; its first run is its test.
#
# Offline by design: images are synthetic (no dataset needed on the GPU machine) and ResNet-50 /
# InceptionResNetV2 get random weights (throughput does not depend on the values; nothing is downloaded).
#   bench/gpu_worker.sh                 # IMAGES=12000 LOADERS=<cores-1, max 8> PYTHON=.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || { echo "gpu_worker.sh: no NVIDIA GPU visible" >&2; exit 1; }
CORES=$(nproc)
LOADERS=${LOADERS:-$(( CORES > 9 ? 8 : (CORES > 1 ? CORES - 1 : 1) ))}
exec "$PY" bench/worker_throughput.py --device cuda --batch-size 256 --rounds 2 \
  --models tf_efficientnet_lite0,resnet50,inception_resnet_v2 --random-weights \
  --synthetic "${IMAGES:-12000}" --loader-workers "$LOADERS" --section worker-gpu "$@"
