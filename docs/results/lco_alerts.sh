#!/bin/bash
# Leave-corpus-out alert benchmark (the model cards' leave-corpus-out note), with the alert
# rules `callmon calibrate` chose for the shipped model (docs/results/calibration.json) and no
# temperature. The two models are trained on one corpus each:
#   runs/ravdess-only-model: the RAVDESS-only model shipped before (actors 03-16);
#   runs/emodb-all/onnx:     callmon train --data ../shared/data/emodb --fold -1, exported int8.
# Run from the repository root: bash docs/results/lco_alerts.sh
set -euo pipefail
callmon=${CALLMON:-.venv/bin/callmon}
eval "$(python3 -c "
import json; a = json.load(open('docs/results/calibration.json'))['alerts']
print(f'export CALLMON_ALERT_SMOOTHING={a[\"smoothing\"]} CALLMON_ALERT_BASELINE={a[\"baseline\"]}')
print(f'export CALLMON_ALERT_CONSECUTIVE={a[\"frustration\"][\"consecutive\"]}')
for k in ('frustration', 'distress'):
    print(f'export CALLMON_{k.upper()}_ON={a[k][\"on\"]} CALLMON_{k.upper()}_OFF={a[k][\"off\"]}')
")"
env | grep CALLMON_
$callmon bench alerts --data ../shared/data/emodb --model runs/ravdess-only-model \
    --out docs/results/lco_alerts_ravdess_to_emodb.json
$callmon bench alerts --data ../shared/data/ravdess --model runs/emodb-all/onnx \
    --out docs/results/lco_alerts_emodb_to_ravdess.json
