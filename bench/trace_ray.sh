#!/usr/bin/env bash
# Issue #22's trace acceptance: RUNs traced by 2 Ray workers into an s3:// store on a local S3 server (moto's), and
# by one process into a local store; validate the S3 store, compare the two stores array by array, compare the
# numbers of `loralens report` on each, and render every page of the app on the S3 store (AppTest).
# Usage: bench/trace_ray.sh OUT_DIR RUN [RUN...]    e.g. the runs of bench/grid.sh plus a frozen partner
# Environment: PER_CLASS (default 25), SHARDS (default 2).
set -euo pipefail
out=$1; shift
mkdir -p "$out"
rm -rf "$out/local.zarr" "$out/report-local" "$out/report-s3"
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
common=(--per-class "${PER_CLASS:-25}")
for run in "$@"; do
  start=$(date +%s.%N)
  loralens trace --run "$run" --store "$out/local.zarr" "${common[@]}" 2>> "$out/trace-local.log"
  echo "$(basename "$run"): one process, local store: $(echo "$(date +%s.%N) - $start" | bc) s"
  start=$(date +%s.%N)
  loralens trace --run "$run" --store "$s3" "${common[@]}" "${storage[@]}" --ray --shards "${SHARDS:-2}" \
    2>> "$out/trace-ray.log"
  echo "$(basename "$run"): ${SHARDS:-2} Ray workers, S3 store: $(echo "$(date +%s.%N) - $start" | bc) s"
done
loralens validate "$s3" "${storage[@]}" | head -3
python - "$out/local.zarr" "$s3" "$url" <<'PY'
import sys
import numpy as np
from store.reader import StoreReader
local, remote = StoreReader(sys.argv[1]), StoreReader(sys.argv[2], {"endpoint_url": sys.argv[3]})
same, differ = 0, []
for run, checkpoints in local.runs().items():
    for checkpoint in checkpoints:
        for name in sorted(local.group(run, checkpoint).array_keys()):
            key = f"runs/{run}/{checkpoint}/{name}"
            if np.array_equal(local.root[key][...], remote.root[key][...], equal_nan=True):
                same += 1
            else:
                differ.append(key)
print(f"arrays: {same} identical, {len(differ)} differ {differ[:5]}")
PY
loralens report --store "$out/local.zarr" --out "$out/report-local" 2> /dev/null
loralens report --store "$s3" --out "$out/report-s3" "${storage[@]}" 2> /dev/null
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
a, b = (json.load(open(f"{out}/report-{k}/summary.json")) for k in ("local", "s3"))
print(f"report: runs {sorted(a['runs'])}; numbers "
      + ("identical" if a["runs"] == b["runs"] and a.get("rank_comparisons") == b.get("rank_comparisons") else "DIFFER"))
for name, run in a["runs"].items():
    for item in run["findings"]:
        print(f"  {name}: {item['finding']}: {'holds' if item['holds'] else 'does not hold'} ({item['evidence']})")
PY
LORALENS_STORE=$s3 LORALENS_STORAGE_OPTIONS="{\"endpoint_url\": \"$url\"}" python - <<'PY'
import app
from streamlit.testing.v1 import AppTest
from store.reader import STORAGE_OPTIONS_ENV
assert STORAGE_OPTIONS_ENV == "LORALENS_STORAGE_OPTIONS", STORAGE_OPTIONS_ENV
at = AppTest.from_file(app.__path__[0] + "/main.py", default_timeout=600).run()
problems = []
for page in ("overview", "utterance", "clusters", "dynamics", "contributions", "causal", "upload"):
    if page != "overview":
        at.switch_page(f"sections/{page}.py").run()
    problems += [f"{page}: {e.value}" for e in [*at.exception, *at.error]]
print("app on the S3 store: every page renders" if not problems else f"app on the S3 store: {problems}")
PY
