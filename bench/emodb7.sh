#!/usr/bin/env bash
# Issue #37 item 4, a number comparable with the field: EmoDB with all 7 emotions, leave one speaker out (10 folds),
# bundled base, LoRA r=32 on v_proj and the frozen encoder (same head, window, schedule), scored by UAR, WAR and
# macro-F1 (EmoBox's UA, WA, macro-F1) and printed beside EmoBox's published EmoDB results with the protocol
# differences spelled out (bench/emobox_compare.py). Each command resumes where it stopped: run it again until done.
# Usage: bench/emodb7.sh [OUT_DIR] [EMODB_DIR]      writes OUT_DIR/MODEL-lora and OUT_DIR/MODEL-frozen
# Environment:
#   MODEL       bundled model (default base; tiny.en for a smoke run)
#   SEED        training seed (default 0)
#   EPOCHS      epochs per fold for both methods (default: loralens train's, 10 LoRA and 30 frozen)
#   ONLY_FOLDS  fold indices to train now, e.g. 0,1 (default all 10); the table then says how many are done
#   DEVICE      auto (default), cpu or cuda
# A GPU job: 10 folds x 10 epochs of base LoRA on 535 clips, plus the frozen head; on 2 CPU cores it takes hours.
set -euo pipefail
out=${1:-runs/emodb7}
emodb=${2:-../shared/data/emodb}
model=${MODEL:-base}
epochs=()
[ -z "${EPOCHS:-}" ] || epochs=(--epochs "$EPOCHS")
only=()
[ -z "${ONLY_FOLDS:-}" ] || only=(--only-folds "$ONLY_FOLDS")
common=(--data "emodb:$emodb" --emotions all --folds loso --window trim --batch-size 8 --schedule linear --warmup 0.1
        --seed "${SEED:-0}" --device "${DEVICE:-auto}" "${epochs[@]}" "${only[@]}")
loralens train --model "bundled:$model" --method lora --rank 32 --alpha 64 --targets v_proj "${common[@]}" \
  --out "$out/$model-lora"
loralens train --model "bundled:$model" --method frozen "${common[@]}" --out "$out/$model-frozen"
python "$(dirname "$0")/emobox_compare.py" "$out/$model-lora" "$out/$model-frozen"
