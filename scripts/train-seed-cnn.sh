#!/usr/bin/env bash
# Trains the shipped seed-CNN baseline (issue 3) in two stages, both distilled from the
# shipped EfficientNet-Lite0 (half of each target is its P(dog) on that training photo):
#  1. runs/seed-cnn-v3: 18 passes over the training split at batch 32, cosine learning
#     rate from 2e-3, batch norm folded away on save (about 85 minutes on 2 cores);
#  2. runs/seed-cnn-v4: 14 more passes starting from stage 1's weights, without batch norm
#     (it is folded in), cosine from 6e-4, milder augmentation, and a moving average of
#     the weights (decay 0.999) evaluated and shipped (about 55 minutes).
# Safe to stop and run again: each stage resumes from its checkpoint with the same schedule.
# Usage: bash scripts/train-seed-cnn.sh [DATA_DIR]   (default ../shared/data/train)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:-${CATSDOGS_DATA_DIR:-../shared/data/train}}"
cargo build --release -p catsdogs
bin=target/release/catsdogs
teacher=(--teacher models/effnet-lite0 --teacher-weight 0.5)

if [ ! -f runs/seed-cnn-v3/model.json ]; then
  "$bin" train --data "$data" --out runs/seed-cnn-v3 \
    --epochs 18 --lr 0.002 --weight-decay 0.0001 --label-smoothing 0.05 \
    --aug-min-area 0.6 --aug-rotation 8 --aug-jitter 0.2 --patience 6 \
    "${teacher[@]}" --version seed-cnn-3 --quiet --resume
fi

exec "$bin" train --data "$data" --out runs/seed-cnn-v4 \
  --init-weights runs/seed-cnn-v3/model.safetensors --no-batch-norm --ema 0.999 \
  --epochs 14 --lr 0.0006 --weight-decay 0.0001 --label-smoothing 0.05 \
  --aug-min-area 0.75 --aug-rotation 5 --aug-jitter 0.15 --patience 6 \
  "${teacher[@]}" --version seed-cnn-4 --quiet --resume
