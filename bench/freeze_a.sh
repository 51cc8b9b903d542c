#!/usr/bin/env bash
# Issue #37 item 3, "Does A matter?" (Zhu et al., "Asymmetry in Low-Rank Adapters of Foundation Models", ICML 2024:
# B does most of the work, a random frozen A nearly matches): one `loralens grid` of bundled base on EmoDB (4 classes,
# leave one speaker out), LoRA r=32 on v_proj against the same with every A kept at its random start
# (method lora-freeze-a, i.e. loralens train --freeze-a), seeds 0, 1 and 2; then each method's UAR with a 95 %
# interval over seeds and the paired difference (bench/freeze_a_compare.py). Re-run to resume.
# Usage: bench/freeze_a.sh [OUT_DIR] [EMODB_DIR]      writes OUT_DIR/grid.toml and its run directories
# Environment:
#   MODEL       bundled model (default base; tiny.en for a smoke run)
#   SEEDS       TOML list of seeds (default [0, 1, 2])
#   EPOCHS      epochs per fold (default 10, loralens train's for LoRA)
#   ONLY_FOLDS  fold indices to train now in every run, e.g. 0,1 (default all 10)
#   JOBS        folds trained at once in processes of this machine (default 1; on a GPU, 2-4 keep it busier)
# A GPU job: 2 methods x 3 seeds x 10 folds of base LoRA.
set -euo pipefail
out=${1:-runs/freeze-a}
emodb=$(realpath "${2:-../shared/data/emodb}")
only=()
[ -z "${ONLY_FOLDS:-}" ] || only=(--only-folds "$ONLY_FOLDS")
mkdir -p "$out"
cat > "$out/grid.toml" <<SPEC
models = ["bundled:${MODEL:-base}"]
data = "emodb:$emodb"
methods = ["lora", "lora-freeze-a"]
ranks = [32]
seeds = ${SEEDS:-[0, 1, 2]}
folds = "loso"
windows = ["trim"]

[train]
epochs = ${EPOCHS:-10}
targets = ["v_proj"]
batch_size = 8
schedule = "linear"
warmup = 0.1
SPEC
loralens grid "$out/grid.toml" --out "$out" --jobs "${JOBS:-1}" "${only[@]}"
python "$(dirname "$0")/freeze_a_compare.py" "$out"
