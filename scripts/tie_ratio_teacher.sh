#!/usr/bin/env bash
# The DCD teacher decoded as its trajectories are (left to right) with a canonical tie-break of ratio R
# (`--tie-ratio`), on the CXR-Phantom test split: quality, and how consistently it phrases each statement
# (scripts/phrasing_consistency.py; R=0 is the plain argmax). STUDY.md §3d chose R from these rows.
#   bash scripts/tie_ratio_teacher.sh [RUN_DIR] [BLOCK_LENGTH]   (RUN_DIR from scripts/train_builtin_model.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/builtin}
L=${2:-4}
RATIOS=${RATIOS:-"0.3 0.5 0.7"}
if [ "$L" = 8 ]; then TEACHER=rad-b8-continued; else TEACHER=rad-b$L; fi
E=.venv/bin/echocxr
. scripts/lib/stages.sh  # evaluate: the shared evaluation row
DATA=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
OUT=benchmarks/results/builtin_model/tie_ratio
mkdir -p "$OUT"
: > "$OUT/phrasing_consistency.jsonl"
for lang in en zh; do
  rows="$RUN/eval/ar-$lang $RUN/eval/rad-sequential-b$L-$lang"  # written by scripts/train_builtin_model.sh
  for r in $RATIOS; do
    evaluate "rad-sequential-tie$r-b$L" "$RUN/$TEACHER/final" $lang --decoder multistep --steps $L \
      --remasking sequential --tie-ratio "$r"
    rows="$rows $RUN/eval/rad-sequential-tie$r-b$L-$lang"
  done
  $E eval --summaries $rows --reference-row "ar-$lang" --table-out "$OUT/table_$lang.md"
  preds=""; for d in $rows; do preds="$preds $d/predictions.jsonl"; cp "$d/summary.json" "$OUT/summary-$(basename "$d").json"; done
  .venv/bin/python scripts/phrasing_consistency.py $lang $preds >> "$OUT/phrasing_consistency.jsonl"
done
echo "RATIOS=\"$RATIOS\" bash scripts/tie_ratio_teacher.sh $RUN $L" > "$OUT/COMMAND"
