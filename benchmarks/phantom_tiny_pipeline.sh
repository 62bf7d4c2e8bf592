#!/usr/bin/env bash
# Wall time of the phantom-tiny recipe end to end (AR -> RAD -> DCD) on this machine's CPU.
#   bash benchmarks/phantom_tiny_pipeline.sh [RUN_DIR] [OUT_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/tiny}
OUT=${2:-benchmarks/results/phantom_tiny_pipeline.json}
E=.venv/bin/echocxr
rm -rf "$RUN"
S=$(date +%s)
$E train ar --config phantom-tiny --out "$RUN/ar" --no-progress
A=$(date +%s)
$E train rad --config phantom-tiny --out "$RUN/rad" --from "$RUN/ar/final" --no-progress
R=$(date +%s)
$E train dcd --config phantom-tiny --out "$RUN/dcd" --from "$RUN/rad/final" --no-progress
D=$(date +%s)
cat > "$OUT" <<JSON
{"command": "bash benchmarks/phantom_tiny_pipeline.sh $RUN $OUT",
 "what": "wall seconds of each phantom-tiny stage (phantom rendering included in ar), CPU",
 "cpus": $(nproc), "ar_s": $((A-S)), "rad_s": $((R-A)), "dcd_s": $((D-R)), "total_s": $((D-S))}
JSON
cat "$OUT"
