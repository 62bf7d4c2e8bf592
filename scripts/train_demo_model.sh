#!/usr/bin/env bash
# Train the built-in demo model (AR -> RAD -> DCD on CXR-Phantom, CPU), evaluate every stage and decoder on
# the phantom test split, and install the DCD model as the package's built-in model.
#   bash scripts/train_demo_model.sh [RUN_DIR]      (default runs/demo; about an hour on 2 CPU cores)
# A stage whose RUN_DIR/<stage>/final exists is not trained again.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
E=.venv/bin/echocxr
L=4
stage() {  # stage NAME [extra args]
  local name=$1; shift
  if [ -f "$RUN/$name/final/config.json" ]; then echo "stage $name: done already"; return; fi
  $E train "$name" --config phantom-demo --out "$RUN/$name" --no-progress "$@"
}
stage ar
stage rad --from "$RUN/ar/final" --block-length $L
stage dcd --from "$RUN/rad/final" --block-length $L
# the phantom set the recipe rendered (its summary names it: the cache, or beside older runs)
DATA=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
# quality on the whole test split, 16 studies decoded together (TPF does not depend on batching; TPS here is
# batched CPU throughput)
EV="--manifest $DATA/test_en.json --max-new-tokens 256 --gen-batch-size 16"
$E eval --model "$RUN/ar/final"  --decoder ar $EV --out "$RUN/eval/ar"
$E eval --model "$RUN/rad/final" --decoder multistep --steps $L --remasking low_confidence_dynamic --threshold 0.9 $EV --out "$RUN/eval/rad-multistep"
$E eval --model "$RUN/rad/final" --decoder onestep $EV --out "$RUN/eval/rad-native-onestep"
$E eval --model "$RUN/dcd/final" --decoder onestep $EV --out "$RUN/eval/dcd-onestep"
$E eval --summaries "$RUN/eval/ar" "$RUN/eval/rad-multistep" "$RUN/eval/rad-native-onestep" "$RUN/eval/dcd-onestep" \
  --reference-row ar --table-out "$RUN/eval/table.md" --plot-out "$RUN/eval/quality_vs_tpf.png"
# install as the built-in model and keep the evidence
rm -rf src/echocxr/assets/demo_model && mkdir -p src/echocxr/assets
cp -r "$RUN/dcd/final" src/echocxr/assets/demo_model
mkdir -p benchmarks/results/demo_model
cp "$RUN/eval/table.md" "$RUN/eval/quality_vs_tpf.png" benchmarks/results/demo_model/
for d in ar rad-multistep rad-native-onestep dcd-onestep; do cp "$RUN/eval/$d/summary.json" "benchmarks/results/demo_model/summary-$d.json"; done
for s in ar rad dcd; do cp "$RUN/$s/summary.json" "benchmarks/results/demo_model/train-$s.json"; done
echo "bash scripts/train_demo_model.sh $RUN" > benchmarks/results/demo_model/COMMAND
