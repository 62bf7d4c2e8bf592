#!/usr/bin/env bash
# Batch-1 decoding speed (the paper's setting) of a training run's models on the CXR-Phantom test split, CPU:
# AR vs multi-step vs one-step with the vanilla and the fused block cache.
#   bash benchmarks/decode_speed.sh [RUN_DIR] [BLOCK_LENGTH]   (RUN_DIR from scripts/train_builtin_model.sh,
#   default runs/builtin, block length 8 (the shipped model); the previous built-in model's run was runs/demo with block length 4)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/builtin}
L=${2:-8}
# the DCD teacher and its student as scripts/train_builtin_model.sh names them
if [ "$L" = 8 ]; then TEACHER=${TEACHER:-rad-b8-continued}; else TEACHER=${TEACHER:-rad-b$L}; fi
STUDENT=${STUDENT:-dcd-b$L}  # (TEACHER=rad STUDENT=dcd for the previous built-in model's run, runs/demo)
E=.venv/bin/echocxr
# the phantom set the recipe rendered (its summary names it: the cache, or beside older runs)
DATA=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
OUT=benchmarks/results/decode_speed  # block length 8 here, another in block<L>/
[ "$L" = 8 ] || OUT=$OUT/block$L
EV="--manifest $DATA/test_en.json --max-new-tokens 256 --gen-batch-size 1 --metrics speed,rouge_l --protocol raw"
$E eval --model "$RUN/ar/final"  --decoder ar $EV --out "$RUN/speed/ar"
$E eval --model "$RUN/$TEACHER/final" --decoder multistep --steps $L --remasking low_confidence_dynamic --threshold 0.9 $EV --out "$RUN/speed/rad-multistep"
$E eval --model "$RUN/$STUDENT/final" --decoder onestep --no-fused $EV --out "$RUN/speed/dcd-onestep-vanilla"
$E eval --model "$RUN/$STUDENT/final" --decoder onestep $EV --out "$RUN/speed/dcd-onestep-fused"
mkdir -p "$OUT"
$E eval --summaries "$RUN/speed/ar" "$RUN/speed/rad-multistep" "$RUN/speed/dcd-onestep-vanilla" \
  "$RUN/speed/dcd-onestep-fused" --reference-row ar --table-out "$OUT/table.md"
for d in ar rad-multistep dcd-onestep-vanilla dcd-onestep-fused; do cp "$RUN/speed/$d/summary.json" "$OUT/summary-$d.json"; done
echo "bash benchmarks/decode_speed.sh $RUN $L" > "$OUT/COMMAND"
