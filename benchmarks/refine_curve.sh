#!/usr/bin/env bash
# One-step decoding with one refinement pass (`--refine T`: a block with any token at or below confidence T gets one
# more forward over those tokens, seeing the rest) on a training run's DCD model: quality against tokens per
# forward over thresholds, beside the run's AR, multi-step and plain one-step rows, on the 240 CXR-Phantom test
# studies per language. Reuses the evaluations scripts/train_builtin_model.sh wrote in RUN/eval.
#   bash benchmarks/refine_curve.sh [RUN_DIR] [BLOCK_LENGTH]   (default runs/builtin, 4: the installed model)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/builtin}
L=${2:-4}
THRESHOLDS=${THRESHOLDS:-"0.5 0.7 0.8 0.9 0.95"}
E=.venv/bin/echocxr
. scripts/lib/stages.sh  # evaluate: the shared evaluation row
DATA=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
OUT=benchmarks/results/refine_curve
mkdir -p "$OUT"
for lang in en zh; do
  rows="$RUN/eval/ar-$lang $RUN/eval/rad-multistep-b$L-$lang $RUN/eval/rad-sequential-b$L-$lang $RUN/eval/dcd-onestep-b$L-$lang"
  for t in $THRESHOLDS; do
    evaluate "dcd-refine$t-b$L" "$RUN/dcd-b$L/final" $lang --decoder onestep --refine "$t"
    rows="$rows $RUN/eval/dcd-refine$t-b$L-$lang"
  done
  $E eval --summaries $rows --reference-row "ar-$lang" --table-out "$OUT/table_$lang.md" \
    --plot-out "$OUT/quality_vs_tpf_$lang.png"
  for d in $rows; do cp "$d/summary.json" "$OUT/summary-$(basename "$d").json"; done
done
echo "THRESHOLDS=\"$THRESHOLDS\" bash benchmarks/refine_curve.sh $RUN $L" > "$OUT/COMMAND"
