#!/usr/bin/env bash
# A rehearsal, here on the CPU and at no device time, of the call bench/gpu_carry.sh prepares for a lent GPU machine:
# the same Python (3.12), the versions its image holds of what the project imports (torch 2.11, transformers 5.17,
# peft 0.21, numpy 2.5.2, ...: the device tool's KINDS.md, read on 2026-11-17; pandas, scikit-learn, numba and pytest
# at their newest, as there), the carried wheels installed as the device command installs them (pip --target, then
# PYTHONPATH), then what the call runs: the gpu tests collected (they skip without CUDA), the meta-device tests, the
# carried float16 export loaded, and DEVICE=cpu SMALL=1 bench/gpu_check.sh. A failure here (a package the image lacks,
# an API of its older transformers) would have cost a 15-minute GPU session; session 22's rehearsal found none, and
# found the check's trace profile cut by a closed pipe.
# Needs: Python 3.12 (PYTHON312, python3.12 on PATH, or pyenv's), and bench/gpu_carry.sh run first (.gpu/ and .whl/).
# Usage: bench/gpu_rehearse.sh [VENV]   (default /tmp/gpu-rehearsal-venv, kept for the next rehearsal; ~5 GB: the
#        CUDA build of torch, which runs on the CPU)
set -euo pipefail
venv=${1:-/tmp/gpu-rehearsal-venv}
cd "$(dirname "$0")/.."
[ -d .gpu/base ] && [ -d .whl ] || { echo "gpu_rehearse: run bench/gpu_carry.sh first (.gpu/ and .whl/)" >&2; exit 2; }
python312=${PYTHON312:-}  # the GPU image's Python: PYTHON312, else python3.12 on PATH, else pyenv's
for candidate in "$python312" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
  if [ -n "$candidate" ] && "$candidate" -c '' 2>/dev/null; then python312=$candidate; break; fi
done
"$python312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null ||
  { echo "gpu_rehearse: no Python 3.12 (the GPU image's); set PYTHON312=/path/to/python3.12" >&2; exit 2; }
if [ ! -x "$venv/bin/python" ]; then
  "$python312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "torch==2.11.0" "transformers==5.17.0" "peft==0.21.*" "numpy==2.5.2" \
    "safetensors==0.8.0" "tokenizers==0.23.2" "huggingface_hub==1.33.0" pandas scikit-learn numba pytest hypothesis
fi
site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-rehearsal-site.XXXXXX")
out=$(mktemp -d "${TMPDIR:-/tmp}/gpu-rehearsal-out.XXXXXX")
# As on the machine (bench/gpu_carry.sh prints the device command): the wheels beside the image's packages.
"$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
export PATH="$venv/bin:$PATH" PYTHONPATH="$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python - <<'PY'
import peft, torch, transformers
from loralens.precompute.models import load_classifier
model = load_classifier(".gpu/base", ["anger", "happiness", "neutral", "sadness"])
print(f"gpu_rehearse: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
      f".gpu/base loads as {type(model).__name__} in {next(model.parameters()).dtype}")
PY
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
python -m pytest -q -p no:cacheprovider tests/test_device.py
OUT="$out/check" DEVICE=cpu SMALL=1 bash bench/gpu_check.sh
echo "gpu_rehearse: passed; the check's runs and stores in $out/check"
