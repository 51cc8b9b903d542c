#!/usr/bin/env bash
# Issue #3's acceptance: trace the EmoDB runs of bench/train_emodb.sh (bundled base: LoRA r=32 with its random
# twin, and frozen; 100 class-balanced utterances) into one store, then time it, size it and validate it.
# Usage: bench/trace_emodb.sh [RUNS_DIR] [STORE] [MODEL]    (MODEL: base or tiny.en)
set -euo pipefail
runs=${1:-runs/emodb/seed-0}
store=${2:-runs/emodb.zarr}
model=${3:-base}
start=$(date +%s.%N)
loralens trace --run "$runs/$model-lora-trim" --run "$runs/$model-frozen-trim" --store "$store" --per-class 25
echo "$model-lora-trim and $model-frozen-trim: traced and summarised in $(echo "$(date +%s.%N) - $start" | bc) s"
loralens validate "$store"
python - "$store" <<'PY'
import sys
from pathlib import Path
from loralens.store.reader import StoreReader
store = sys.argv[1]
reader = StoreReader(store)
total = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
n_utt = reader.n_utterances
print(f"store {store}: {total / 2**20:.1f} MiB on disk, {n_utt} utterances")
for run, checkpoints in reader.runs().items():
    for checkpoint in checkpoints:
        size = sum(f.stat().st_size for f in (Path(store) / "runs" / run / checkpoint).rglob("*") if f.is_file())
        layers = reader.attrs(run, checkpoint)["n_layers"]
        print(f"  {run}/{checkpoint}: {size / 2**20:.1f} MiB, {size / n_utt / layers / 1024:.1f} KiB per utterance per layer")
PY
python bench/read_latency.py "$store"
