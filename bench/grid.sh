#!/usr/bin/env bash
# Issue #22's grid acceptance: tiny.en on EmoDB, LoRA ranks 8 and 32 x seeds 0 and 1, leave-one-speaker-out, trim,
# trained by `loralens grid` one fold after the other in this process, then as Ray tasks on a local Ray started by
# the command (its start counted): both wall times, their ratio, and whether every fold's metrics are identical.
# A Ray task of 1 core runs torch on 1 thread where the process alone takes every core, and float32 sums taken by
# another number of threads round differently in the last bits; so the grid runs a third time on Ray with 2 cores
# per task (one at a time here, as many threads as the sequential run), where every byte must be identical. Then
# the kill step: the grid on Ray with no retries, one of its Ray workers killed with SIGKILL while it trains a fold,
# the command run again: every fold complete, completed once (train.log), with the sequential grid's metrics.
# Usage: bench/grid.sh [OUT_DIR] [EMODB_DIR]       (removes OUT_DIR/{sequential,ray,ray-2cpu,killed} first)
# Environment: EPOCHS (default 1), ONLY_FOLDS (default 0,1: the first two LOSO folds of every run; empty: all 10),
# BYTES=0 skips the 2-core run, KILL=0 the kill step. A tiny.en fold of one epoch takes ~25 s on 2 idle cores
# (~85 s when they are shared three ways): 40 folds of 10 epochs would take hours each way.
set -euo pipefail
out=${1:-runs/grid-bench}
emodb=$(realpath "${2:-../shared/data/emodb}")
epochs=${EPOCHS:-1}
only=${ONLY_FOLDS-0,1}
subset=()
[ -z "$only" ] || subset=(--only-folds "$only")
mkdir -p "$out"
rm -rf "$out/sequential" "$out/ray" "$out/ray-2cpu" "$out/killed"
status=0
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
loralens grid "$spec" "${subset[@]}" --out "$out/ray" --ray --cpus 1 2> "$out/ray.log"
ray=$(echo "$(date +%s.%N) - $start" | bc)
echo "ray (2 tasks of 1 core at a time): $ray s"
python bench/grid_compare.py "$out/sequential" "$out/ray" --seconds-ref "$sequential" --seconds-other "$ray" || status=1

if [ "${BYTES:-1}" = 1 ]; then
  start=$(date +%s.%N)
  loralens grid "$spec" "${subset[@]}" --out "$out/ray-2cpu" --ray --cpus "$(nproc)" 2> "$out/ray-2cpu.log"
  echo "ray (1 task of $(nproc) cores at a time): $(echo "$(date +%s.%N) - $start" | bc) s"
  python bench/grid_compare.py "$out/sequential" "$out/ray-2cpu" --bytes || status=1
fi

[ "${KILL:-1}" = 1 ] || exit $status
echo "== kill step"
loralens grid "$spec" "${subset[@]}" --out "$out/killed" --ray --retries 0 --cpus 1 2> "$out/killed-1.log" &
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
loralens grid "$spec" "${subset[@]}" --out "$out/killed" --ray --retries 0 --cpus 1 2> "$out/killed-2.log" || status=1
grep "INFO loralens" "$out/killed-2.log" | tail -1
grep -h "resuming after epoch" "$out"/killed/*/train.log | sed 's/^/  /' || true
python bench/grid_compare.py "$out/ray" "$out/killed" --bytes || status=1  # both on 1-core tasks: every byte
exit $status
