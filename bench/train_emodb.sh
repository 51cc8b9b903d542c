#!/usr/bin/env bash
# Issue #2's acceptance runs: EmoDB 4-class, leave-one-speaker-out, LoRA r=32 on v_proj against the frozen
# encoder, same head and window, for bundled base and tiny.en, under each seed; then the full 30 s window on
# two folds. Each command resumes where it stopped, so this script can be run again (and again) until all
# are complete.
# Usage: bench/train_emodb.sh [OUT_DIR] [EMODB_DIR]    then: python bench/summarise_runs.py OUT_DIR
# Writes OUT_DIR/seed-S/MODEL-METHOD-WINDOW for each seed S.
# Environment:
#   SEEDS       seeds to repeat the trim runs under (default "0 1 2"): per-fold UAR on 39-clip test speakers
#               moves by up to 0.2 between seeds, so the acceptance is read off the seed average
#   MODELS      bundled models (default "tiny.en base")
#   SCHEDULE    learning-rate schedule, constant or linear (default linear), WARMUP its warmup fraction
#               (default 0.1): the Hugging Face Trainer's schedule,
#               the same for both methods
#   FULL_FOLDS  folds for the full window, run under the first seed (default 0,1; empty skips it)
#   SELECTION   epoch selection, fixed or inner (default fixed): inner holds one training speaker out of each
#               fold and keeps the epoch best on it, so give it its own OUT_DIR
# Epochs per fold are loralens train's defaults (the most, with SELECTION=inner): 10 for LoRA, 30 for frozen.
set -euo pipefail
out=${1:-runs/emodb}
emodb=${2:-../shared/data/emodb}
seeds=${SEEDS:-0 1 2}
models=${MODELS:-tiny.en base}
full_folds=${FULL_FOLDS-0,1}
common=(--data "emodb:$emodb" --folds loso --batch-size 8 --rank 32 --alpha 64 --targets v_proj
        --schedule "${SCHEDULE:-linear}" --warmup "${WARMUP:-0.1}" --epoch-selection "${SELECTION:-fixed}")
for seed in $seeds; do
  for model in $models; do
    for method in frozen lora; do
      loralens train --model "bundled:$model" --method "$method" --window trim "${common[@]}" --seed "$seed" \
        --out "$out/seed-$seed/$model-$method-trim"
    done
  done
done
[ -n "$full_folds" ] || exit 0
# The full window costs ~20x per step on 2 s clips: frozen first (one encoder pass), then LoRA, cheaper model first.
first=${seeds%% *}
for method in frozen lora; do
  for model in $models; do
    loralens train --model "bundled:$model" --method "$method" --window full "${common[@]}" --seed "$first" \
      --only-folds "$full_folds" --out "$out/seed-$first/$model-$method-full"
  done
done
