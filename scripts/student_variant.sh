#!/usr/bin/env bash
# One change to the L=4 DCD student's recipe, trained and compared with a baseline student on the CXR-Phantom
# test split (STUDY.md §3e-§5): quality against AR, the left-to-right teacher and the baseline; phrasing
# agreement (normal and finding statements apart) of both students and of their trajectories; validity by
# number of findings; where each student first departs from its own teacher (scripts/first_divergence.py).
#   bash scripts/student_variant.sh RUN_DIR NAME [echocxr train dcd args ...]
# e.g.  bash scripts/student_variant.sh RUN dcd-b4-seed1 --seed 1
#       bash scripts/student_variant.sh RUN dcd-b4-label1 --label-weight 1
#       BASELINE=dcd-b4-tie0.7 TIE_RATIO=0.5 TIE_RATIO_en=0.5 bash scripts/student_variant.sh RUN dcd-b4-tie0.5 \
#         --trajectory-tie-ratio 0.5 --trajectory-tie-ratio-for en=0.5
# BASELINE: the student compared with (default dcd-b4, the one scripts/train_builtin_model.sh trains; RUN/BASELINE/
# final; its summary.json, when there, names its trajectories). TIE_RATIO, TIE_BREAK: the tie ratio and tie-break
# of the teacher the variant's trajectories come from, for both languages; TIE_RATIO_en / TIE_RATIO_zh,
# TIE_BREAK_en / TIE_BREAK_zh set one language's (defaults: the recipe's, 0.3 lowest_id in English, 0.3 image in
# Chinese); the teacher's left-to-right decode of the test split is RUN/eval/rad-sequential-tie<R>[-<tie
# break>]-b4-LANG.
# BASE_TIE_RATIO[_en|_zh], BASE_TIE_BREAK[_zh]: the same for the baseline's teacher (default: the variant's
# ratios, and the recipe's tie-breaks).
# Resumable: a finished training or evaluation is not run again. Results: benchmarks/results/builtin_model/
# variants/NAME/ (table-LANG.md, summary-*.json, analysis.jsonl, train.json, COMMAND).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash scripts/student_variant.sh RUN_DIR NAME [train dcd args]" >&2; exit 2; }
RUN=$(cd "$1" && pwd)
NAME=$2
shift 2
ARGS="$*"
E=$PWD/.venv/bin/echocxr
P=$PWD/.venv/bin/python
RECIPE=phantom-builtin
BASELINE=${BASELINE:-dcd-b4}
TIE_RATIO=${TIE_RATIO:-0.3}
TIE_RATIO_en=${TIE_RATIO_en:-$TIE_RATIO}
TIE_RATIO_zh=${TIE_RATIO_zh:-$TIE_RATIO}
TIE_BREAK_zh=${TIE_BREAK_zh:-image}
TIE_BREAK=${TIE_BREAK:-lowest_id}
BASE_TIE_BREAK=${BASE_TIE_BREAK:-lowest_id}
BASE_TIE_BREAK_zh=${BASE_TIE_BREAK_zh:-image}
. scripts/lib/stages.sh  # stage, evaluate: the shared training stage and evaluation row
DATA=$($P -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
[ -f "$RUN/$BASELINE/final/config.json" ] || { echo "$RUN/$BASELINE/final: no baseline student" >&2; exit 1; }
stage "$NAME" dcd --from "$RUN/rad-b4/final" --block-length 4 "$@"
OUT=benchmarks/results/builtin_model/variants/$NAME
mkdir -p "$OUT"
cp "$RUN/$NAME/summary.json" "$OUT/train.json"
: > "$OUT/analysis.jsonl"
teacher_of() {  # teacher_of LANG PREFIX TIE_BREAK: the left-to-right teacher row at PREFIX's tie ratio for LANG
  local ratio_var=$2_$1 default_var=$2
  local ratio=${!ratio_var:-${!default_var:-}}
  [ -n "$ratio" ] || { ratio_var=TIE_RATIO_$1; ratio=${!ratio_var:-$TIE_RATIO}; }
  if [ "$3" = lowest_id ]; then echo "rad-sequential-tie$ratio-b4 $ratio $3"
  else echo "rad-sequential-tie$ratio-$3-b4 $ratio $3"; fi
}
for lang in en zh; do
  rows="$RUN/eval/ar-$lang"
  evaluate ar "$RUN/ar/final" $lang --decoder ar
  pairs=""
  break_var=TIE_BREAK_$lang
  base_break_var=BASE_TIE_BREAK_$lang
  for who in "$BASELINE BASE_TIE_RATIO ${!base_break_var:-$BASE_TIE_BREAK}" "$NAME TIE_RATIO ${!break_var:-$TIE_BREAK}"; do
    read -r student prefix tie_break <<< "$who"
    read -r teacher ratio tie_break <<< "$(teacher_of $lang $prefix $tie_break)"
    evaluate "$teacher" "$RUN/rad-b4/final" $lang --decoder multistep --steps 4 --remasking sequential \
      --tie-ratio "$ratio" --tie-break "$tie_break"
    evaluate "$student-onestep" "$RUN/$student/final" $lang --decoder onestep
    case " $rows " in *" $RUN/eval/$teacher-$lang "*) ;; *) rows="$rows $RUN/eval/$teacher-$lang";; esac
    rows="$rows $RUN/eval/$student-onestep-$lang"
    pairs="$pairs $teacher:$student-onestep"
  done
  for d in $rows; do cp "$d/summary.json" "$OUT/summary-$(basename "$d").json"; done
  $E eval --summaries $rows --reference-row "ar-$lang" --table-out "$OUT/table-$lang.md"
  base="$RUN/eval/$BASELINE-onestep-$lang" d="$RUN/eval/$NAME-onestep-$lang"
  {
    PYTHONPATH=src $P scripts/phrasing_consistency.py $lang "$base/predictions.jsonl" "$d/predictions.jsonl"
    for s in "$base" "$d"; do
      PYTHONPATH=src $P scripts/validity_by_findings.py "$DATA/test_$lang.json" "$s/predictions.jsonl"
    done
    for pair in $pairs; do  # each student against its own teacher's reports
      PYTHONPATH=src $P scripts/first_divergence.py $lang "$RUN/eval/${pair%%:*}-$lang/per_sample.jsonl" \
        "$RUN/eval/${pair#*:}-$lang/per_sample.jsonl" \
        | sed "s#^{#{\"student\": \"${pair#*:}\", \"teacher\": \"${pair%%:*}\", #"
    done
  } >> "$OUT/analysis.jsonl"
done
# the targets: the trajectory caches each student was trained on (a baseline without its summary is skipped)
for run in "$BASELINE" "$NAME"; do
  [ -f "$RUN/$run/summary.json" ] || continue
  # one cache, or one per tie ratio (a ratio per language: each cache holds one language's examples)
  for CACHE in $($P -c 'import json, sys; p = json.load(open(sys.argv[1]))["trajectories"]["path"]
print(*(p if isinstance(p, list) else [p]))' "$RUN/$run/summary.json"); do
    [ -f "$CACHE" ] || continue
    (cd scripts && PYTHONPATH=../src $P trajectory_phrasing.py "$CACHE" "$RUN/$run/final" "$DATA") \
      | sed "s#^{#{\"run\": \"$run\", #" >> "$OUT/analysis.jsonl"
  done
done
vars="BASELINE=$BASELINE TIE_RATIO=$TIE_RATIO TIE_RATIO_en=$TIE_RATIO_en${TIE_RATIO_zh:+ TIE_RATIO_zh=$TIE_RATIO_zh}"
vars="$vars${BASE_TIE_RATIO:+ BASE_TIE_RATIO=$BASE_TIE_RATIO} TIE_BREAK=$TIE_BREAK BASE_TIE_BREAK=$BASE_TIE_BREAK BASE_TIE_BREAK_zh=$BASE_TIE_BREAK_zh"
vars="$vars${TIE_BREAK_en:+ TIE_BREAK_en=$TIE_BREAK_en}${TIE_BREAK_zh:+ TIE_BREAK_zh=$TIE_BREAK_zh}"
echo "$vars bash scripts/student_variant.sh $RUN $NAME${ARGS:+ $ARGS}" > "$OUT/COMMAND"
