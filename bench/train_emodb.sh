#!/usr/bin/env bash
# Issue #2's acceptance runs: EmoDB 4-class, leave-one-speaker-out, LoRA r=32 on v_proj against the frozen
# encoder, same head and window, for bundled base and tiny.en; then the full 30 s window on two folds.
# Each command resumes where it stopped, so this script can be run again (and again) until all are complete.
# Usage: bench/train_emodb.sh [OUT_DIR] [EMODB_DIR]    then: python bench/summarise_runs.py OUT_DIR
# Environment: SEED (default 0), MODELS (default "tiny.en base"), FULL_FOLDS (folds for the full window,
# default 0,1; empty skips it). The same runs under other seeds, for summarise_runs.py to average:
#   SEED=1 FULL_FOLDS= bench/train_emodb.sh runs/emodb-seed1
set -euo pipefail
out=${1:-runs/emodb}
emodb=${2:-../shared/data/emodb}
seed=${SEED:-0}
models=${MODELS:-tiny.en base}
full_folds=${FULL_FOLDS-0,1}
common=(--data "emodb:$emodb" --folds loso --epochs 10 --batch-size 8 --rank 32 --alpha 64 --targets v_proj
        --seed "$seed")
for model in $models; do
  for method in frozen lora; do
    loralens train --model "bundled:$model" --method "$method" --window trim "${common[@]}" \
      --out "$out/$model-$method-trim"
  done
done
[ -n "$full_folds" ] || exit 0
# The full window costs ~20x per step on 2 s clips: frozen first (one encoder pass), then LoRA, cheaper model first.
for method in frozen lora; do
  for model in $models; do
    loralens train --model "bundled:$model" --method "$method" --window full "${common[@]}" \
      --only-folds "$full_folds" --out "$out/$model-$method-full"
  done
done
