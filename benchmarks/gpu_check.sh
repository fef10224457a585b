#!/usr/bin/env bash
# One script for a machine with a GPU, a few minutes in all (each part has its own time limit):
#   1. a 2-trial sweep on the GPU whose backbones start from weights files given in the spec (written first);
#   2. the distillation step resnet101 -> resnet34 at 224 px (B = 64, C = 80), both models built from ImageNet-shaped
#      weights files through l2d's loader: images/s, the share of the step in the L2D loss, peak GPU memory;
#   3. the same step from random initialisation, for comparison.
# Writes benchmarks/results/gpu_step.json (the step from weights files) and prints every result.
#   bash benchmarks/gpu_check.sh        (after `make install`, or with PYTHON pointing at an environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; this script is for a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
echo "== 1. a 2-trial sweep on the GPU, backbones initialised from weights files =="
mkdir -p /tmp/l2d-gpu-check/weights
"$PYTHON" - <<'PY'
import timm, torch
for name in ("resnet14t", "resnet10t"):
    torch.save(timm.create_model(name, pretrained=False).state_dict(), f"/tmp/l2d-gpu-check/weights/{name}.pth")
PY
timeout 240 "$PYTHON" -m sweeps.cli run benchmarks/gpu_check.yaml --new
"$PYTHON" -m sweeps.cli results /tmp/l2d-gpu-check/gpu-check --sql \
    "SELECT trial_id, status, epochs_run, round(best_val_mAP, 2) AS val_mAP, round(images_per_s) AS img_s FROM trials"
echo "== 2. the distillation step: resnet101 -> resnet34, 224 px, B = 64, C = 80, from weights files =="
timeout 150 "$PYTHON" benchmarks/gpu_step.py --device cuda --teacher resnet101 --student resnet34 --image-size 224 \
    --batch-size 64 --classes 80 --weights files
echo "== 3. the same step from random initialisation =="
timeout 150 "$PYTHON" benchmarks/gpu_step.py --device cuda --teacher resnet101 --student resnet34 --image-size 224 \
    --batch-size 64 --classes 80 --out /tmp/l2d-gpu-check/gpu_step_random.json
echo "gpu_check: done in $(( $(date +%s) - start )) s"
