#!/usr/bin/env bash
# Issue #24's acceptance: the full intervention set (every layer of lora_off, lora_only, lora_off_from, erase and
# patch; every audio change at its default grid) for the LoRA run and the frozen run of bench/train_emodb.sh,
# patched from each other, on a store bench/trace_emodb.sh wrote; wall time of each, then the report's causal
# section. The store is copied first, so that interventions already there do not shorten the timing.
# Usage: bench/intervene_emodb.sh [RUNS_DIR] [STORE] [MODEL]    (MODEL: base or tiny.en)
set -euo pipefail
runs=${1:-runs/emodb/seed-0}
store=${2:-runs/emodb.zarr}
model=${3:-base}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$store" "$work/store.zarr"
python - "$work/store.zarr" <<'PY'
import shutil, sys
from pathlib import Path
for group in Path(sys.argv[1]).glob("runs/*/interventions"):
    shutil.rmtree(group)  # computed again below, timed
PY
total=0
for pair in "$model-lora-trim $model-frozen-trim" "$model-frozen-trim $model-lora-trim"; do
  set -- $pair
  start=$(date +%s.%N)
  loralens intervene --run "$runs/$1" --store "$work/store.zarr" --partner "$runs/$2"
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  total=$(echo "$total + $seconds" | bc)
  echo "$1: every intervention in $seconds s"
done
echo "both runs: $total s (goal: at most 900 s for 100 utterances)"
loralens report --store "$work/store.zarr" --out "$work/report" >/dev/null
sed -n '/### Causal lens/,/^Figures/p' "$work/report/summary.md"
