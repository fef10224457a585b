#!/usr/bin/env bash
# One script for a machine with a GPU, under 5 minutes: a 2-trial sweep with use_gpu, then the images/s of the
# distillation step for resnet101 -> resnet34 at 224 px (B = 64, C = 80) and the share of the step spent in
# the L2D loss. Writes benchmarks/results/gpu_step.json and prints both results.
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
echo "== 1. a 2-trial sweep on the GPU =="
"$PYTHON" -m sweeps.cli run benchmarks/gpu_check.yaml --new
"$PYTHON" -m sweeps.cli results /tmp/l2d-gpu-check/gpu-check --sql \
    "SELECT trial_id, status, epochs_run, round(best_val_mAP, 2) AS val_mAP, round(images_per_s) AS img_s FROM trials"
echo "== 2. the distillation step: resnet101 -> resnet34, 224 px, B = 64, C = 80 =="
"$PYTHON" benchmarks/gpu_step.py --device cuda --teacher resnet101 --student resnet34 --image-size 224 \
    --batch-size 64 --classes 80
echo "gpu_check: done in $(( $(date +%s) - start )) s"
