#!/usr/bin/env bash
# The seed-CNN training run in progress (issue 3): 30 epochs of 250 batches of 32, cosine
# learning rate from 2e-3, batch norm folded away on save. Safe to stop at any time and to
# run again: it resumes from runs/seed-cnn-v2/checkpoint with the same schedule.
# Usage: bash scripts/train-seed-cnn.sh [DATA_DIR]   (default ../shared/data/train)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="${1:-${CATSDOGS_DATA_DIR:-../shared/data/train}}"
cargo build --release
exec target/release/catsdogs train --data "$data" --out runs/seed-cnn-v2 \
  --epochs 30 --steps-per-epoch 250 --lr 0.002 --weight-decay 0.0001 --label-smoothing 0.05 \
  --aug-min-area 0.8 --aug-rotation 0 --aug-jitter 0.1 --patience 8 --version seed-cnn-2 --quiet --resume
