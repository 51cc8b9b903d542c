#!/usr/bin/env bash
# Issue #2's acceptance runs: EmoDB 4-class, leave-one-speaker-out, LoRA r=32 on v_proj against the frozen
# encoder, same head and window, for bundled base and tiny.en; then the full 30 s window on two folds.
# Each command resumes where it stopped, so this script can be run again (and again) until all are complete.
# Usage: bench/train_emodb.sh [OUT_DIR] [EMODB_DIR]    then: python bench/summarise_runs.py OUT_DIR
set -euo pipefail
out=${1:-runs/emodb}
emodb=${2:-../shared/data/emodb}
common=(--data "emodb:$emodb" --folds loso --epochs 10 --batch-size 8 --rank 32 --alpha 64 --targets v_proj)
for model in tiny.en base; do
  for method in frozen lora; do
    loralens train --model "bundled:$model" --method "$method" --window trim "${common[@]}" \
      --out "$out/$model-$method-trim"
  done
done
# The full window costs ~20x per step on 2 s clips: frozen first (one encoder pass), then LoRA, cheaper model first.
for run in base:frozen tiny.en:frozen tiny.en:lora base:lora; do
  model=${run%%:*}
  method=${run##*:}
  loralens train --model "bundled:$model" --method "$method" --window full "${common[@]}" --only-folds 0,1 \
    --out "$out/$model-$method-full"
done
