#!/usr/bin/env bash
# loralens import on real weights and real speech (bundled whisper-base, EmoDB), in two parts.
#
# Part 1, a model trained elsewhere: a LoRA adapter trained by a plain transformers + peft script
# (bench/peft_emodb.py: the paper's recipe, 30 s window, Trainer's checkpoint-N layout) for the fold that holds out
# speaker 03, imported, traced beside a frozen partner, validated and reported; the store's predictions checked
# against the PEFT model's own forward pass.
# Part 2, import against training: a 10-fold loralens LoRA run's adapters written out in the paper's layout,
# imported, and 100 utterances traced from both (alternately, twice each): the time ratio and the predictions.
#
# Usage: bench/import_emodb.sh [OUT_DIR] [EMODB_DIR]      (EPOCHS=1 by default; PART=1 or PART=2 runs one part)
set -euo pipefail
out=${1:-runs/import-bench}
emodb=${2:-../shared/data/emodb}
epochs=${EPOCHS:-1}
part=${PART:-all}
mkdir -p "$out"
t() { local s=$(date +%s.%N); "$@"; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }

[ -d "$out/base" ] || loralens model export bundled:base --out "$out/base"

if [ "$part" != 2 ]; then
  echo "== part 1: a plain PEFT adapter (fold of speaker 03), imported beside a frozen partner"
  [ -d "$out/v_proj/fold1" ] || python bench/peft_emodb.py --base "$out/base" --data "$emodb" --out "$out/v_proj" \
    --speakers 03 --epochs "$epochs"
  loralens import "$out/v_proj/fold1" --model "$out/base" --data "emodb:$emodb" --out "$out/imported" \
    --test-speakers 03
  loralens train --model "$out/base" --data "emodb:$emodb" --method frozen --window full --only-folds 0 \
    --out "$out/frozen"
  rm -rf "$out/store.zarr"
  loralens trace --run "$out/imported" --run "$out/frozen" --store "$out/store.zarr" --all
  loralens validate "$out/store.zarr"
  loralens report --store "$out/store.zarr" --out "$out/report"
  python - "$out" "$emodb" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

from loralens.precompute.audio import load_audio
from loralens.store.reader import StoreReader

out = Path(sys.argv[1])
reader = StoreReader(str(out / "store.zarr"))
rows = np.flatnonzero(reader.written("imported")).tolist()
table = reader.utterances()
extractor = WhisperFeatureExtractor.from_pretrained(out / "base")
base = WhisperForAudioClassification.from_pretrained(out / "base", num_labels=4, ignore_mismatched_sizes=True)
checkpoint = next((out / "v_proj" / "fold1").glob("checkpoint-*"))
model = PeftModel.from_pretrained(base, checkpoint).eval()
features = extractor([load_audio(s) for s in table["source"][rows]], sampling_rate=16000,
                     return_tensors="pt").input_features
with torch.no_grad():
    theirs = torch.cat([model(input_features=features[i:i + 8]).logits for i in range(0, len(rows), 8)]).numpy()
mine = reader.read("imported", "trained", "logits", rows)
same = (mine.argmax(1) == theirs.argmax(1)).mean()
print(f"part 1: {len(rows)} held-out utterances of speaker 03; store predictions = the PEFT model's own forward for "
      f"{100 * same:.0f} %; largest logit difference {np.abs(mine - theirs).max():.2e} (fp32)")
PY
  (cd bench && python - "$out/store.zarr" <<'PY'
import sys

import pages

draws, peak = pages.warm_draws(sys.argv[1])  # every page in headless Chromium, on one running loralens app
for title, d in draws.items():
    print(f"part 1: {title}: " + (d.error or f"drawn in {d.whole:.1f} s, {d.charts} charts"))
PY
  )
fi

if [ "$part" != 1 ]; then
  echo "== part 2: a 10-fold loralens run's adapters, written in the paper's layout and imported"
  loralens train --model "$out/base" --data "emodb:$emodb" --method lora --rank 32 --alpha 64 --targets v_proj \
    --window trim --epochs "$epochs" --out "$out/trained"
  python - "$out" <<'PY'
import json
import sys
from pathlib import Path

from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import WhisperForAudioClassification

from loralens.precompute.config import completed_folds

out = Path(sys.argv[1])
run = out / "trained"
emotions = json.loads((run / "config.json").read_text())["emotions"]
for k in completed_folds(run):
    model = WhisperForAudioClassification.from_pretrained(out / "base", num_labels=4, ignore_mismatched_sizes=True,
                                                           id2label=dict(enumerate(emotions)))
    head = load_file(run / f"fold_{k:02d}" / "head.safetensors")
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=["v_proj"], lora_dropout=0.1,
                                             modules_to_save=["projector", "classifier"]))
    lora = load_file(run / f"fold_{k:02d}" / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(model, lora | {f"base_model.model.{name}": v for name, v in head.items()})
    model.save_pretrained(out / "paper-layout" / f"fold{k + 1}" / "checkpoint-1")
print("wrote", out / "paper-layout")
PY
  folds=$(for k in $(seq 1 10); do printf '%s ' "$out/paper-layout/fold$k"; done)
  # shellcheck disable=SC2086
  loralens import $folds --model "$out/base" --data "emodb:$emodb" --out "$out/reimported" --window trim
  for round in 1 2; do
    for run in trained reimported; do
      rm -rf "$out/$run.zarr"
      secs=$(t loralens trace --run "$out/$run" --store "$out/$run.zarr" --per-class 25 --no-summary 2>/dev/null | tail -1)
      echo "round $round: $run traced 100 utterances in $secs s"
    done
  done
  python - "$out" <<'PY'
import sys
from pathlib import Path

import numpy as np

from loralens.store.reader import StoreReader

out = Path(sys.argv[1])
a, b = StoreReader(str(out / "trained.zarr")), StoreReader(str(out / "reimported.zarr"))
ids_a, ids_b = a.utterances()["id"], b.utterances()["id"]
assert list(ids_a) == list(ids_b)
rows = np.flatnonzero(a.written("trained")).tolist()
la, lb = a.read("trained", "trained", "logits", rows), b.read("reimported", "trained", "logits", rows)
print(f"part 2: {len(rows)} utterances; predictions equal for {100 * (la.argmax(1) == lb.argmax(1)).mean():.0f} %; "
      f"largest logit difference {np.abs(la - lb).max():.2e}")
PY
fi
