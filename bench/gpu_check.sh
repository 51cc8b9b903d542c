#!/usr/bin/env bash
# Issue #20's GPU check, one command on a machine with a GPU and this project installed (a CUDA build of torch):
# the gpu tests, then the benchmarks, each figure printed as it comes and all again at the end; a part that fails is
# reported and the rest still run (the exit status says whether any failed). Sized to take under
# 7 minutes on one H100 with EmoDB (run there on 2026-11-26: 390 s with CPU_TRACE=0 SUMMARY=0; on 2026-11-27 its parts
# 1-2 with GPU_TESTS=folds_at_once took 190 s, the trace part was cut by the caller's limit; figures in README.md).
#   1. pytest -m gpu (LORALENS_REQUIRE_GPU=1: a missing GPU fails them instead of skipping), with the measured
#      CUDA-vs-CPU trace deviations and the store-vs-predictions.csv agreement of the tiny runs;
#   2. training wall time: EmoDB 4-class LOSO, MODEL, LoRA r=32 on v_proj, 10 epochs, trim, the whole
#      loralens train command (start-up, audio, model loading included), JOBS folds at once, against two folds one
#      after the other; plus the frozen baseline it is traced with;
#   3. tracing 100 utterances (LoRA trained + random twin + frozen): one loralens trace of both runs on DEVICE
#      (capture and store writes, --no-summary), then loralens summarise timed on its own, then the same trace on
#      this machine's CPU in fp32 (CPU_TRACE=0 skips it), the device trace again with --writers 0 (a writer thread
#      instead of the default writer processes), and the stores' agreement with training's predictions;
#   4. capture overhead: one batch of 8 clips captured (every residual, LoRA A/B output and gradient, to NumPy)
#      against a bare forward + backward of the same loss on the same model, medians of 5; the capture's phases
#      (traced passes, reductions, copies to the host) and torch.profiler's operator tables (on stderr; its chrome
#      trace in OUT/capture-profile.json);
#   5. a training step: 20 steps queued back to back (as an epoch runs them), the same reading each loss, the same
#      with fused AdamW, and the log-mel batch a step builds (from the log-mel each clip keeps, extracted once per run, both windows)
#      against the queued step.
# Usage: bench/gpu_check.sh [EMODB_DIR]          (default ../shared/data/emodb)
# Environment:
#   DEVICE     where to train and trace (default cuda)
#   MODEL      --model SPEC (default bundled:base)
#   OUT        where runs and stores go (default a new temporary directory, kept and named at the end)
#   CPU_TRACE  0 skips the CPU trace (the slowest part on a small CPU)
#   SUMMARY    0 skips timing loralens summarise (host work, the same on any device)
#   FROZEN     0 leaves out the frozen baseline (its training and its trace)
#   JOBS       folds trained at once (loralens train --jobs; default 10: EmoDB's LOSO folds all at once)
#   SEQUENTIAL 0 skips the reference of folds 0-1 trained one after the other
#   PROFILE    0 skips the LoRA run's trace under cProfile (its top functions by cumulative and by own time)
#   THREAD_TRACE 0 skips the trace again with --writers 0
#   GPU_TESTS  a pytest -k expression: only those gpu tests (default all)
#   SMALL=1    a plumbing check that runs anywhere (DEVICE=cpu SMALL=1 on a machine without a GPU): the tests' tiny
#              random Whisper on synthetic tones, 1 epoch, 2 utterances per class; pytest -m gpu only where CUDA is
set -uo pipefail  # not -e: a failed part is reported and the later parts still run (one GPU call, all figures)
emodb=${1:-}
[ -z "$emodb" ] || [ "${emodb:0:1}" = / ] || emodb="$PWD/$emodb"  # a relative path is the caller's
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
emodb=${emodb:-../shared/data/emodb}
device=${DEVICE:-cuda}
model=${MODEL:-bundled:base}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
small=${SMALL:-0}
frozen=${FROZEN:-1}
mkdir -p "$out"
figures="$out/figures.txt"
: > "$figures"
loralens() { python -m loralens.cli "$@"; }  # the checkout's own code, installed or not
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
figure() { echo "== $*" | tee -a "$figures"; }
failed=()
fail() { failed+=("$1"); echo "== FAILED: $1" | tee -a "$figures"; }
started=$(now)

epochs=10 per_class=25 data="emodb:$emodb"
if [ "$small" = 1 ]; then
  model="$out/tiny-whisper" epochs=1 per_class=2 data="csv:$out/tones/manifest.csv"
  python - "$out" <<'PY'
import sys
from pathlib import Path
import torch
from transformers import WhisperForAudioClassification
from tests.conftest import tiny_config, write_tone_csv
out = Path(sys.argv[1])
torch.manual_seed(0)
WhisperForAudioClassification(tiny_config()).save_pretrained(out / "tiny-whisper")
(out / "tones").mkdir(exist_ok=True)
write_tone_csv(out / "tones")
PY
elif [ ! -d "$emodb/wav" ]; then
  echo "gpu_check: no EmoDB at $emodb (expected $emodb/wav); give its directory: bench/gpu_check.sh DIR" >&2
  exit 2
fi
python - "$device" <<'PY'
import sys
import torch
device = torch.device(sys.argv[1])
if device.type == "cuda" and not torch.cuda.is_available():
    sys.exit(f"gpu_check: DEVICE={device} but CUDA is not available to torch {torch.__version__} (built for CUDA "
             f"{torch.version.cuda}); install a CUDA build of torch, or check the plumbing with DEVICE=cpu SMALL=1")
name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
print(f"gpu_check: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.get_num_threads()} CPU threads")
PY

# 1. The gpu tests.
report="$out/gpu-tests.jsonl"
: > "$report"
if [ "$small" != 1 ] || python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  t=$(now)
  if LORALENS_REQUIRE_GPU=1 LORALENS_GPU_REPORT="$report" python -m pytest -m gpu -q -p no:cacheprovider \
      ${GPU_TESTS:+-k "$GPU_TESTS"} tests/test_gpu.py
  then figure "pytest -m gpu: passed in $(since "$t") s"
  else fail "pytest -m gpu (after $(since "$t") s)"
  fi
  python - "$report" <<'PY' | tee -a "$figures"
import json
import sys
from collections import defaultdict
rows = [json.loads(line) for line in open(sys.argv[1])]
worst, by_slice = defaultdict(float), defaultdict(float)
for r in rows:
    if "relative_deviation" in r:
        key = (r["precision"], r["window"])
        worst[key] = max(worst[key], r["relative_deviation"])
        by_slice[key] = max(by_slice[key], r.get("slice_deviation", 0.0))
for (precision, window), value in sorted(worst.items()):
    print(f"== CUDA {precision} trace vs CPU fp32 trace ({window}): largest deviation {value:.2e} of an array's "
          f"largest value, {by_slice[precision, window]:.2e} of a slice's norm (tests/test_gpu.py TOLERANCE)")
for r in rows:
    if r["test"] == "agreement":
        print(f"== tiny {r['method']} {r['window']} on CUDA: store vs predictions.csv agreement {r['rate']:.2f}, "
              f"largest probability gap {r['max_probability_gap']:.1e}")
PY
else
  echo "gpu_check: SMALL=1 without CUDA: pytest -m gpu left out"
fi

# 2. Training wall time: the folds JOBS at once (loralens train --jobs), against folds 0-1 one after the other in one
#    process (the default, --jobs 1): its seconds per fold times the fold count is what the whole run would take so.
common=(--model "$model" --data "$data" --folds loso --rank 32 --alpha 64 --targets v_proj --window trim
        --batch-size 8 --device "$device")
jobs=${JOBS:-10}
t=$(now)
loralens train "${common[@]}" --method lora --epochs "$epochs" --out "$out/lora" --jobs "$jobs" \
  2> >(tee "$out/lora.log" >&2) || fail "train LoRA"
parallel=$(since "$t")
figure "train LoRA r=32, LOSO, $epochs epochs, trim, $model on $device, --jobs $jobs: $parallel s (goal <= 30 s)"
if [ "${SEQUENTIAL:-1}" != 0 ]; then
  t=$(now)
  loralens train "${common[@]}" --method lora --epochs "$epochs" --out "$out/lora-sequential" --only-folds 0,1 ||
    fail "train LoRA folds 0-1 one after the other"
  two=$(since "$t")
  # One process pays its start-up (imports, audio, features, model) once: all folds so would take that start-up
  # plus each fold's own seconds (folds 0-1's mean, from their metrics.json) times the fold count.
  figure "the same, folds 0-1 one after the other in one process (--jobs 1): $two s; $(python - "$out" "$two" \
    "$parallel" <<'PY'
import json
import sys
out, two, parallel = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
n = len(json.load(open(f"{out}/lora/folds.json"))["folds"])
folds = [json.load(open(f"{out}/lora-sequential/fold_0{k}/metrics.json"))["seconds"] for k in (0, 1)]
whole = two - sum(folds) + sum(folds) / 2 * n
print(f"start-up {two - sum(folds):.0f} s + {sum(folds) / 2:.1f} s a fold: all {n} folds so about {whole:.0f} s, "
      f"{whole / parallel:.1f}x the --jobs run")
PY
)"
fi
t=$(now)
if [ "$frozen" = 1 ]; then
  loralens train "${common[@]}" --method frozen --out "$out/frozen" --jobs "$jobs" || fail "train frozen"
  figure "train frozen, LOSO, default epochs, trim, $model on $device, --jobs $jobs: $(since "$t") s"
fi
python - "$out/lora" "$out/lora-sequential" $([ "$frozen" = 1 ] && echo "$out/frozen") <<'PY' | tee -a "$figures" ||
import json
import re
import statistics
import sys
from pathlib import Path
for run in map(Path, sys.argv[1:]):
    if not (run / "metrics.json").is_file():
        continue
    m = json.loads((run / "metrics.json").read_text())
    print(f"== {run}: UAR {m['uar']['mean']:.3f} ± {m['uar']['std']:.3f} over {m['n_done']} folds")
    # Where a fold's start-up went (train.Trainer.train_fold's setup_seconds; prepare: a trainer's first fold)
    setups = [json.loads(f.read_text()).get("setup_seconds", {}) for f in sorted(run.glob("fold_*/metrics.json"))]
    parts = {k: [s[k] for s in setups if s.get(k) is not None] for k in ("prepare", "model", "first_step")}
    imports = re.findall(r"start-up of a fold.*?imports ([0-9.]+) s", (run.parent / f"{run.name}.log").read_text()
                         if (run.parent / f"{run.name}.log").is_file() else "")
    print(f"==   start-up of a fold (median): {f'imports {imports[-1]} s, ' if imports else ''}"
          + ", ".join(f"{k.replace('_', ' ')} {statistics.median(v):.1f} s" for k, v in parts.items() if v))
PY
  fail "the runs' metrics"

# 3. Tracing 100 utterances: LoRA (trained + random twin) and frozen. Capture and store writes are timed without the
#    summary (--no-summary), which is host work (maps, spectra) the same on any device: it is timed on its own after.
trace() {  # trace DEVICE STORE [flags]: both runs into STORE, one command; prints the seconds, or fails
  local dev=$1 store=$2 t runs=(--run "$out/lora")
  shift 2
  [ "$frozen" = 0 ] || runs+=(--run "$out/frozen")
  t=$(now)
  loralens trace "${runs[@]}" --store "$store" --per-class "$per_class" --device "$dev" --no-summary "$@" \
    2> >(tee "$store.log" >&2) && since "$t"
}
captured() {  # captured STORE: the capture loops' own seconds (start-up and commit left out), from the trace's log
  grep -o 'captured and wrote [0-9]* utterance-checkpoints in [0-9.]* s' "$1.log" |
    awk '{ n += $4; s += $7 } END { printf "%d utterance-checkpoints in %.1f s (%.1f a second)", n, s, n / s }'
}
n_traced=$((4 * per_class))
traced="LoRA trained + random twin$([ "$frozen" = 1 ] && echo " + frozen")"
if gpu_seconds=$(trace "$device" "$out/trace-device.zarr"); then
  # Where the LoRA run's trace spends its time: the same command under cProfile, into a store of its own.
  if [ "${PROFILE:-1}" != 0 ]; then
    python -m cProfile -o "$out/trace.prof" -m loralens.cli trace --run "$out/lora" --store "$out/trace-profiled.zarr" \
      --per-class "$per_class" --device "$device" --no-summary 2>/dev/null
    python - "$out/trace.prof" > "$out/trace-profile.txt" <<'PY'
import pstats
import sys
stats = pstats.Stats(sys.argv[1])
print(f"== profile of the LoRA run's trace on the device: {stats.total_tt:.1f} s in all; by cumulative time:")
stats.sort_stats("cumulative").print_stats(30)
print("== the same profile by own time:")
stats.sort_stats("tottime").print_stats(20)
PY
    cat "$out/trace-profile.txt"  # whole: head closing the pipe cut its second table (BrokenPipeError)
  fi
  figure "trace $n_traced utterances ($traced) on $device, the runs' precision, capture and" \
    "store writes: $gpu_seconds s (goal <= ~7 s: 10x the 2-core reference CPU's ~63 s); the capture loops alone:" \
    "$(captured "$out/trace-device.zarr")"
  t=$(now)
  if [ "${SUMMARY:-1}" = 0 ]; then :
  elif loralens summarise "$out/trace-device.zarr" --maps umap; then
    figure "summarise both runs (host work; UMAP at every layer): $(since "$t") s"
  else fail "loralens summarise"
  fi
  loralens validate "$out/trace-device.zarr" || fail "validate the $device store"
  # The same trace with the batches written by this process's one writer thread (--writers 0), against the
  # default (writer processes, a quarter of the cores): what the writer processes buy on this machine.
  if [ "${THREAD_TRACE:-1}" = 0 ]; then :
  elif thread_seconds=$(trace "$device" "$out/trace-thread.zarr" --writers 0); then
    figure "the same trace with --writers 0 (one writer thread): $thread_seconds s; the capture loops alone:" \
      "$(captured "$out/trace-thread.zarr") (default here: $(python -c 'from loralens.precompute.trace import default_writers
print(default_writers("x"))') writer processes)"
  else fail "trace on $device with --writers 0"
  fi
else
  fail "trace on $device"
fi
if [ "${CPU_TRACE:-1}" != 0 ]; then
  if cpu_seconds=$(trace cpu "$out/trace-cpu-fp32.zarr" --precision fp32); then
    figure "the same trace on this machine's CPU in fp32: $cpu_seconds s; $device is $(awk -v c="$cpu_seconds" \
      -v g="${gpu_seconds:-nan}" 'BEGIN { printf "%.1f", c / g }')x faster; the capture loops alone:" \
      "$(captured "$out/trace-cpu-fp32.zarr")"
  else fail "trace on the CPU"
  fi
fi
python - "$out" <<'PY' | tee -a "$figures" || fail "the stores' agreement"
import sys
from pathlib import Path
from loralens.store.reader import StoreReader
for store in sorted(Path(sys.argv[1]).glob("trace-*.zarr")):
    reader = StoreReader(str(store))
    for run in reader.runs():
        a = reader.attrs(run, "trained")
        agreement = a.get("prediction_agreement") or {}
        print(f"== {store.name} {run}: traced in {a['capture']['precision']}, training in "
              f"{agreement.get('train_precision')}: {agreement.get('n_agree')}/{agreement.get('n_compared')} "
              "predictions as in predictions.csv")
PY

# 4. Capture overhead and 5. training steps.
python - "$out" "$device" "$model" "$data" <<'PY' | tee -a "$figures" || fail "capture overhead and step times"
import statistics
import sys
import time
from pathlib import Path

import torch

from loralens.precompute import windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.capture import CaptureOptions, Capturer
from loralens.precompute.checkpoints import load_fold_model
from loralens.precompute.config import TrainConfig, read_config
from loralens.precompute.data import load_corpus
from loralens.precompute.models import feature_extractor
from loralens.precompute.trace import run_precision
from loralens.precompute.train import Trainer, batch_features, batches, lr_schedule

out, device, model_spec, data = Path(sys.argv[1]), torch.device(sys.argv[2]), sys.argv[3], sys.argv[4]


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn):
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


# 4. Capture against a bare forward + backward, fold 0 of the LoRA run, its precision, 8 clips.
run = out / "lora"
precision = run_precision(run)
model = load_fold_model(run, 0).to(device).eval()
config = read_config(run)
corpus = load_corpus(data, tuple(config.emotions))
chosen = corpus.utterances[:: max(1, len(corpus.utterances) // 8)][:8]
features = windowing.extract(feature_extractor(windowing.whisper_of(model).config), [load_audio(u.path) for u in chosen],
                     "trim").to(device)
labels = torch.tensor([config.emotions.index(u.emotion) for u in chosen], device=device)
capturer = Capturer(model, "trim", CaptureOptions(precision=precision))
lora = [p for n, p in model.named_parameters() if "lora_" in n]


def bare():
    with windowing.autocast(device, precision):
        logits = windowing.classify(model, features)
    torch.autograd.grad(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"), lora)


times = {"bare": [], "capture": []}
timed(bare)  # warm-up
timed(lambda: capturer.run(features, labels))
for _ in range(5):
    times["bare"].append(timed(bare))
    times["capture"].append(timed(lambda: capturer.run(features, labels)))
b, c = statistics.median(times["bare"]), statistics.median(times["capture"])
print(f"== capture overhead ({precision}, batch 8, trim, {device}): bare forward+backward {b * 1e3:.1f} ms, "
      f"capture {c * 1e3:.1f} ms, ratio {c / b:.2f} (goal <= 1.5)")

# Where a capture's time goes: the traced forward and backward, the reductions on the device, the copies to the host
# (each phase ends with a sync), then torch.profiler's table of the host and device operators over 3 captures.
import loralens.precompute.capture as capture_module  # noqa: E402

phases = {"reduce": [], "to host": []}
real_to_numpy, real_per_utterance = capture_module.to_numpy, Capturer._per_utterance


def to_numpy_timed(tensor):
    sync()
    started = time.perf_counter()
    value = real_to_numpy(tensor)
    phases["to host"][-1] += time.perf_counter() - started
    return value


def per_utterance_timed(self, *args):
    sync()
    phases["to host"].append(0.0)
    started = time.perf_counter()
    rows = real_per_utterance(self, *args)
    phases["reduce"].append(time.perf_counter() - started - phases["to host"][-1])
    return rows


capture_module.to_numpy, Capturer._per_utterance = to_numpy_timed, per_utterance_timed
whole = [timed(lambda: capturer.run(features, labels)) for _ in range(5)]
capture_module.to_numpy, Capturer._per_utterance = real_to_numpy, real_per_utterance
w, r, h = (statistics.median(x) for x in (whole, phases["reduce"], phases["to host"]))
print(f"== capture phases ({device}): traced forward+backward {(w - r - h) * 1e3:.1f} ms, reductions {r * 1e3:.1f} ms, "
      f"to the host {h * 1e3:.1f} ms (of {w * 1e3:.1f} ms)")
activities = [torch.profiler.ProfilerActivity.CPU] + (
    [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
with torch.profiler.profile(activities=activities) as profiler:
    for _ in range(3):
        capturer.run(features, labels)
    sync()
profiler.export_chrome_trace(str(out / "capture-profile.json"))
sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
print(profiler.key_averages().table(sort_by=sort, row_limit=20), file=sys.stderr)
print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), file=sys.stderr)
print(f"capture profile (chrome trace, open in https://ui.perfetto.dev): {out / 'capture-profile.json'}",
      file=sys.stderr)

# 5. A training step, trim and full: its time with the steps queued back to back (as an epoch runs them), the same
#    reading each step's loss (which waits for the GPU, as training did before), and the log-mel share of a step.
for window in ("trim", "full"):
    trainer = Trainer(TrainConfig(model=model_spec, data=data, window=window, rank=32, alpha=64, batch_size=8,
                                  device=str(device)), out / f"step-{window}")
    trainer.prepare()
    model, optimizer = trainer.build(seed=0)
    model.train()
    scheduler = lr_schedule(trainer.config, optimizer, 200, 0)
    chunks = batches(trainer.examples, 8, torch.Generator().manual_seed(0))[:21]
    trainer.step(model, chunks[0], optimizer, scheduler)  # warm-up

    def steps(read_each: bool, opt=optimizer, sched=scheduler) -> None:
        for chunk in chunks[1:]:
            loss = trainer.step(model, chunk, opt, sched)
            if read_each:
                loss.item()

    steps(False)  # warm-up of the queued path
    n = len(chunks) - 1
    queued, synced = timed(lambda: steps(False)) / n, timed(lambda: steps(True)) / n
    fused = torch.optim.AdamW([{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay")}
                               for g in optimizer.param_groups], fused=device.type == "cuda")
    fused_scheduler = lr_schedule(trainer.config, fused, 200, 0)
    steps(False, fused, fused_scheduler)  # warm-up
    fused_step = timed(lambda: steps(False, fused, fused_scheduler)) / n
    f = statistics.median(timed(lambda: batch_features(c, trainer.device))
                          for c in chunks[1:])
    print(f"== training step ({trainer.config.precision}, batch 8, {window}, {device}): {queued * 1e3:.1f} ms queued "
          f"back to back, {synced * 1e3:.1f} ms reading each loss; fused AdamW {fused_step * 1e3:.1f} ms; log-mel "
          f"{f * 1e3:.1f} ms ({100 * f / queued:.0f} % of a step, goal < 20 %)")
PY

echo
echo "gpu_check: done in $(since "$started") s; runs and stores in $out"
cat "$figures"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: ${#failed[@]} part(s) failed: ${failed[*]}" >&2
  exit 1
fi
