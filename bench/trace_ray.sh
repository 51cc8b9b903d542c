#!/usr/bin/env bash
# Issue #22's trace acceptance: RUNs traced by 2 Ray workers into an s3:// store on a local S3 server (moto's), and
# by one process into a local store; validate the S3 store, compare the stores array by array, compare the numbers
# of `loralens report` on each, and render every page of the app on the S3 store (AppTest). A Ray task of 1 core
# runs torch on 1 thread where the process alone runs on every core, and float32 sums round differently with the
# thread count; so the runs are traced a third time by Ray tasks of all cores (one at a time here), into a second
# S3 store that must hold every bit of the one-process store.
# Usage: bench/trace_ray.sh OUT_DIR RUN [RUN...]    e.g. a LoRA run of bench/grid.sh and its frozen partner
# Environment: PER_CLASS (default 10), SHARDS (default 2).
set -euo pipefail
out=$1; shift
mkdir -p "$out"
rm -rf "$out/local.zarr" "$out"/report-*
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
moto_server -H 127.0.0.1 -p "$port" > "$out/moto.log" 2>&1 &
moto=$!
trap 'kill $moto' EXIT
url=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
for _ in $(seq 50); do curl -s "$url" > /dev/null && break; sleep 0.2; done
python -c "import s3fs, sys; s3fs.S3FileSystem(endpoint_url=sys.argv[1]).mkdir('loralens')" "$url"
s3=s3://loralens/emodb.zarr
storage=(--endpoint-url "$url" --storage-option key=testing --storage-option secret=testing)
common=(--per-class "${PER_CLASS:-10}")
for run in "$@"; do
  start=$(date +%s.%N)
  loralens trace --run "$run" --store "$out/local.zarr" "${common[@]}" 2>> "$out/trace-local.log"
  echo "$(basename "$run"): one process, local store: $(echo "$(date +%s.%N) - $start" | bc) s"
  start=$(date +%s.%N)
  loralens trace --run "$run" --store "$s3" "${common[@]}" "${storage[@]}" --ray --shards "${SHARDS:-2}" \
    2>> "$out/trace-ray.log"
  echo "$(basename "$run"): ${SHARDS:-2} Ray workers, S3 store: $(echo "$(date +%s.%N) - $start" | bc) s"
  loralens trace --run "$run" --store "$s3-allcores" "${common[@]}" "${storage[@]}" --ray --shards "${SHARDS:-2}" \
    --cpus "$(nproc)" 2>> "$out/trace-ray-allcores.log"
done
loralens validate "$s3" "${storage[@]}" | head -3
python - "$out/local.zarr" "$s3" "$url" <<'PY'
import sys
import numpy as np
from loralens.store.reader import StoreReader
local = StoreReader(sys.argv[1])
for store in (sys.argv[2], sys.argv[2] + "-allcores"):
    remote = StoreReader(store, {"endpoint_url": sys.argv[3]})
    same, differ, worst = 0, [], 0.0
    for run, checkpoints in local.runs().items():
        for checkpoint in checkpoints:
            for name in sorted(local.group(run, checkpoint).array_keys()):
                key = f"runs/{run}/{checkpoint}/{name}"
                a, b = local.root[key][...], remote.root[key][...]
                if np.array_equal(a, b, equal_nan=True):
                    same += 1
                    continue
                differ.append(key)
                a, b = a.astype(np.float64), b.astype(np.float64)
                worst = max(worst, float(np.nanmax(np.abs(a - b)) / max(float(np.nanmax(np.abs(a))), 1e-30)))
    print(f"{store}: {same} arrays identical to the one-process store, {len(differ)} differ (largest difference "
          f"{worst:.1g} of the array's largest value)")
PY
loralens report --store "$out/local.zarr" --out "$out/report-local" 2> /dev/null
loralens report --store "$s3" --out "$out/report-s3" "${storage[@]}" 2> /dev/null
loralens report --store "$s3-allcores" --out "$out/report-s3-allcores" "${storage[@]}" 2> /dev/null
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]

def numbers(tree, path=""):
    """Every number of a summary.json, by its path."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in numbers(value, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in numbers(value, f"{path}/{i}").items()}
    return {path: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}

local = json.load(open(f"{out}/report-local/summary.json"))
for kind in ("s3", "s3-allcores"):
    other = json.load(open(f"{out}/report-{kind}/summary.json"))
    a, b = numbers(local["runs"]), numbers(other["runs"])
    differ = {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
    worst = max((abs(x - y) / max(abs(x), 1e-12) for x, y in differ.values() if y is not None), default=0)
    verdicts = [f["holds"] for r in local["runs"].values() for f in r["findings"]]
    same_verdicts = verdicts == [f["holds"] for r in other["runs"].values() for f in r["findings"]]
    print(f"report on {kind} vs one process: {len(a) - len(differ)} of {len(a)} numbers identical"
          + (f", the others within {worst:.1g} (relative)" if differ else "")
          + f"; findings {'the same' if same_verdicts else 'DIFFER'}")
for name, run in local["runs"].items():
    for item in run["findings"]:
        print(f"  {name}: {item['finding']}: {'holds' if item['holds'] else 'does not hold'} ({item['evidence']})")
PY
LORALENS_STORE=$s3 LORALENS_STORAGE_OPTIONS="{\"endpoint_url\": \"$url\"}" python - <<'PY'
import app
from streamlit.testing.v1 import AppTest
from loralens.store.storage import STORAGE_OPTIONS_ENV
assert STORAGE_OPTIONS_ENV == "LORALENS_STORAGE_OPTIONS", STORAGE_OPTIONS_ENV
at = AppTest.from_file(app.__path__[0] + "/main.py", default_timeout=600).run()
problems = []
for page in ("overview", "utterance", "clusters", "dynamics", "contributions", "causal", "upload"):
    if page != "overview":
        at.switch_page(f"sections/{page}.py").run()
    problems += [f"{page}: {e.value}" for e in [*at.exception, *at.error]]
print("app on the S3 store: every page renders" if not problems else f"app on the S3 store: {problems}")
PY
