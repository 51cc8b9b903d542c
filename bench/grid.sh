#!/usr/bin/env bash
# Issue #22's grid acceptance: tiny.en on EmoDB, LoRA ranks 8 and 32 x seeds 0 and 1, leave-one-speaker-out, trim
# (4 runs x 10 folds), trained by `loralens grid` one fold after the other in this process, then as Ray tasks on a
# local Ray started by the command (its start counted); prints both wall times, their ratio, and whether every
# fold's predictions, weights and metrics are identical. Then the kill step: the same grid on Ray with no retries,
# one Ray worker killed with SIGKILL once a fold has saved an epoch, the command run again: every fold must be
# complete, completed once (train.log), and identical to the sequential grid's.
# Usage: bench/grid.sh [OUT_DIR] [EMODB_DIR]       (removes OUT_DIR/{sequential,ray,killed} first)
# Environment: EPOCHS (default 1), ONLY_FOLDS (default 0,1: the first two LOSO folds of every run; empty: all 10),
# KILL=0 skips the kill step, CPUS (default 1) cores each Ray task holds. A tiny.en fold of one epoch takes ~15 s
# on 2 idle cores (~85 s when they are shared three ways): 40 folds of 10 epochs would take hours each way.
set -euo pipefail
out=${1:-runs/grid-bench}
emodb=$(realpath "${2:-../shared/data/emodb}")
epochs=${EPOCHS:-1}
only=${ONLY_FOLDS-0,1}
subset=()
[ -z "$only" ] || subset=(--only-folds "$only")
mkdir -p "$out"
rm -rf "$out/sequential" "$out/ray" "$out/killed"
spec="$out/grid.toml"
cat > "$spec" <<EOF
models = ["bundled:tiny.en"]
data = "emodb:$emodb"
methods = ["lora"]
ranks = [8, 32]
seeds = [0, 1]
folds = "loso"
windows = ["trim"]

[train]
epochs = $epochs
targets = ["v_proj"]
EOF
echo "== $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); spec $spec (epochs $epochs, folds ${only:-all})"

start=$(date +%s.%N)
loralens grid "$spec" "${subset[@]}" --out "$out/sequential" 2> "$out/sequential.log"
sequential=$(echo "$(date +%s.%N) - $start" | bc)
echo "sequential: $sequential s"

start=$(date +%s.%N)
loralens grid "$spec" "${subset[@]}" --out "$out/ray" --ray --cpus "${CPUS:-1}" 2> "$out/ray.log"
ray=$(echo "$(date +%s.%N) - $start" | bc)
echo "ray: $ray s"
python bench/grid_compare.py "$out/sequential" "$out/ray" --seconds-ref "$sequential" --seconds-other "$ray"

[ "${KILL:-1}" = 1 ] || exit 0
echo "== kill step"
loralens grid "$spec" "${subset[@]}" --out "$out/killed" --ray --retries 0 --cpus "${CPUS:-1}" 2> "$out/killed-1.log" &
grid=$!
# The grid's own Ray workers are descendants of its process (it started the local Ray): kill one of those that
# is training a fold, once some fold has saved an epoch (fold_KK.partial/progress.pt), so that fold resumes.
victim=$(python - "$grid" "$out/killed" <<'PY'
import sys, time
from pathlib import Path
import psutil
grid, out = psutil.Process(int(sys.argv[1])), Path(sys.argv[2])
while grid.is_running():
    if any(out.glob("*/fold_*.partial/progress*")):
        workers = []
        for p in grid.children(recursive=True):
            try:
                if p.cmdline()[:1] == ["ray::train_fold"]:
                    workers.append(p)
            except psutil.Error:  # gone since it was listed
                pass
        if workers:
            print(workers[0].pid)
            break
    time.sleep(0.2)
PY
)
echo "kill -9 $victim (a Ray worker of the grid, training a fold)"
kill -9 "$victim"
if wait "$grid"; then echo "first command: exit 0 (the worker died between folds)"; else echo "first command: exit $? (as expected)"; fi
grep -E "failed|ERROR" "$out/killed-1.log" | grep -v "it/s" | tail -3 || true
echo "partial folds left: $(ls -d "$out"/killed/*/fold_*.partial 2>/dev/null | wc -l), complete: $(ls -d "$out"/killed/*/fold_[0-9][0-9] | wc -l)"
loralens grid "$spec" "${subset[@]}" --out "$out/killed" --ray --retries 0 --cpus "${CPUS:-1}" 2> "$out/killed-2.log"
grep "INFO loralens" "$out/killed-2.log" | tail -1
grep -h "resuming after epoch" "$out"/killed/*/train.log | sed 's/^/  /' || true
python bench/grid_compare.py "$out/sequential" "$out/killed"
