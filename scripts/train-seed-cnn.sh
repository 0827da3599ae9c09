#!/usr/bin/env bash
# Trains the shipped seed-CNN baseline (issue 3): 18 passes over the training split at
# batch 32, cosine learning rate from 2e-3, batch norm folded away on save, distilled from the
# shipped EfficientNet-Lite0 (half of each target is its P(dog)). About 80 minutes on the
# 2-core machine. Safe to stop and run again: it resumes from runs/seed-cnn-v3/checkpoint
# with the same schedule.
# Usage: bash scripts/train-seed-cnn.sh [DATA_DIR]   (default ../shared/data/train)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:-${CATSDOGS_DATA_DIR:-../shared/data/train}}"
cargo build --release -p catsdogs
exec target/release/catsdogs train --data "$data" --out runs/seed-cnn-v3 \
  --epochs 18 --lr 0.002 --weight-decay 0.0001 --label-smoothing 0.05 \
  --aug-min-area 0.6 --aug-rotation 8 --aug-jitter 0.2 --patience 6 \
  --teacher models/effnet-lite0 --teacher-weight 0.5 --version seed-cnn-3 --quiet --resume
