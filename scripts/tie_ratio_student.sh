#!/usr/bin/env bash
# The DCD student distilled from trajectories at tie ratio R (every training study, the recipe otherwise),
# against the student at ratio 0.7 (installed before §3e; RUN/dcd-b4-tie0.7, evaluated as
# RUN/eval/dcd-tie0.7-onestep-b4-<lang>), on the CXR-Phantom test split: quality, phrasing
# agreement of the trajectories and of the student, validity by number of findings, and where the student
# first departs from its teacher (scripts/first_divergence.py). STUDY.md §3e.
#   bash scripts/tie_ratio_student.sh [RUN_DIR] [R]   (RUN_DIR from scripts/train_builtin_model.sh; R default 0.5)
# Resumable: a finished training or evaluation is not run again. Needs scripts/tie_ratio_teacher.sh's rows for R.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$(cd "${1:-runs/builtin}" && pwd)
R=${2:-0.5}
E=$PWD/.venv/bin/echocxr
P=$PWD/.venv/bin/python
NAME=dcd-b4-tie$R
RECIPE=phantom-builtin
. scripts/lib/stages.sh  # stage, evaluate: the shared training stage and evaluation row
DATA=$($P -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
stage "$NAME" dcd --from "$RUN/rad-b4/final" --block-length 4 --trajectory-tie-ratio "$R"
OUT=benchmarks/results/builtin_model/tie_ratio
mkdir -p "$OUT"
cp "$RUN/$NAME/summary.json" "$OUT/train-$NAME.json"
: > "$OUT/student-tie$R.jsonl"
for lang in en zh; do
  d="$RUN/eval/dcd-tie$R-onestep-b4-$lang"
  evaluate "dcd-tie$R-onestep-b4" "$RUN/$NAME/final" $lang --decoder onestep
  cp "$d/summary.json" "$OUT/summary-dcd-tie$R-onestep-b4-$lang.json"
  cp "$RUN/eval/dcd-tie0.7-onestep-b4-$lang/summary.json" "$OUT/summary-dcd-tie0.7-onestep-b4-$lang.json"
  rows="$RUN/eval/ar-$lang $RUN/eval/rad-sequential-tie$R-b4-$lang $RUN/eval/dcd-tie0.7-onestep-b4-$lang $d"
  $E eval --summaries $rows --reference-row "ar-$lang" --table-out "$OUT/table-student-tie$R-$lang.md"
  {
    PYTHONPATH=src $P scripts/phrasing_consistency.py $lang "$d/predictions.jsonl"
    PYTHONPATH=src $P scripts/validity_by_findings.py "$DATA/test_$lang.json" "$d/predictions.jsonl"
    # each student against its own teacher's reports (the Base left to right at the student's tie ratio)
    for pair in "0.7 $RUN/eval/dcd-tie0.7-onestep-b4-$lang" "$R $d"; do
      set -- $pair
      PYTHONPATH=src $P scripts/first_divergence.py $lang "$RUN/eval/rad-sequential-tie$1-b4-$lang/per_sample.jsonl" \
        "$2/per_sample.jsonl" | sed "s#^{#{\"student\": \"$(basename "$2")\", \"teacher_tie_ratio\": $1, #"
    done
  } >> "$OUT/student-tie$R.jsonl"
done
# the targets themselves: the trajectory caches the two students were trained on
for run in dcd-b4-tie0.7 "$NAME"; do
  CACHE=$($P -c 'import json, sys; print(json.load(open(sys.argv[1]))["trajectories"]["path"])' "$RUN/$run/train_config.json")
  (cd scripts && PYTHONPATH=../src $P trajectory_phrasing.py "$CACHE" "$RUN/$run/final" "$DATA") \
    | sed "s#^{#{\"run\": \"$run\", #" >> "$OUT/student-tie$R.jsonl"
done
echo "bash scripts/tie_ratio_student.sh $RUN $R" > "$OUT/COMMAND-student-tie$R"
