#!/usr/bin/env bash
# What a lent GPU machine needs beside this repository for bench/gpu_check.sh, built here (on the CPU, with this
# project installed), so that a session's 15 minutes of device time go to the check and not to preparing it:
#   .gpu/base   bundled:base exported as a Hugging Face directory, its weights in float16 (~41 MB; load_classifier
#               reads them back as float32): the machine reaches no model hub and has no ../shared
#   .gpu/emodb  EmoDB's 4-class clips (anger, happiness, neutral, sadness) as 16 kHz OGG Vorbis (~7 MB at
#               compression level 0.1, about 3 % RMS from the WAVs), named as EmoDB names them
#   .whl        cp312 manylinux wheels of what the machine lacks (it has torch, transformers, peft, scikit-learn,
#               numba, pytest): this venv's versions, without their dependencies, listed below
# Both directories are ignored by git; the device tool carries them: carry [".gpu", ".whl"] (64 MiB with the
# repository: the script prints the total). Then, on the machine, the command it prints at the end.
# Usage: bench/gpu_carry.sh [EMODB_DIR]          (default ../shared/data/emodb)
set -euo pipefail
emodb=${1:-../shared/data/emodb}
[ "${emodb:0:1}" = / ] || emodb="$PWD/$emodb"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The wheels: imported by the project or by its gpu tests and benchmarks, and missing on the machine (measured there
# on 2026-11-26). zstandard and websocket-client serve only nnsight's remote backend: left out.
wheels=(nnsight zarr numcodecs soundfile cffi pycparser pydantic pydantic-core annotated-types typing-inspection
        greenlet platformdirs donfig google-crc32c umap-learn pynndescent typing-extensions)
pinned=()
for name in "${wheels[@]}"; do
  version=$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "gpu_carry: $name is not installed here; install the project first (pip install -e '.[test]')" >&2; exit 2; }
  pinned+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl "${pinned[@]}"

rm -rf .gpu/base .gpu/emodb && mkdir -p .gpu/emodb/wav
python -m loralens.cli model export bundled:base --out .gpu/base
python - "$emodb" <<'PY'
import sys
from pathlib import Path

import soundfile
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from loralens.precompute.audio import load_audio
from loralens.precompute.data import load_corpus

weights = Path(".gpu/base/model.safetensors")
save_file({k: v.half().contiguous() for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
corpus = load_corpus(f"emodb:{sys.argv[1]}")  # the 4 classes
for u in tqdm(corpus.utterances, desc="EmoDB as 16 kHz OGG", unit="clip"):
    soundfile.write(f".gpu/emodb/wav/{Path(u.path).stem}.ogg", load_audio(u.path), 16000, format="OGG",
                    subtype="VORBIS", compression_level=0.1)
print(f"{len(corpus.utterances)} clips")
PY

du -sh .gpu/base .gpu/emodb .whl
total=$( (git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1; du -sb .gpu .whl | cut -f1) |
         awk '{ s += $1 } END { printf "%.1f", s / 1048576 }')
echo "gpu_carry: repository + .gpu + .whl: $total MiB (the device tool carries 64 MiB at most)"
cat <<'EOF'
On the machine (the device tool's run, carry [".gpu", ".whl"], timeout_s leaving time for a second call):
D=$OUT; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
export PYTHONPATH=/tmp/site || exit 3; mkdir -p /tmp/bin; command -v python >/dev/null ||
ln -sf "$(command -v python3)" /tmp/bin/python; export PATH=/tmp/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1;
OUT=/tmp/gc MODEL=.gpu/base CPU_TRACE=0 SUMMARY=0 THREAD_TRACE=0 timeout -k 5 500 bash bench/gpu_check.sh .gpu/emodb \
  > $D/log 2>&1; cp /tmp/gc/figures.txt /tmp/gc/gpu-tests.jsonl $D/; cat $D/figures.txt
EOF
