#!/usr/bin/env bash
# One change to the installed L=4 DCD student's recipe, trained and compared with it on the CXR-Phantom test
# split (STUDY.md §3f): quality against AR, the left-to-right teacher and the installed student; phrasing
# agreement (normal and finding statements apart) of the student and of its trajectories; validity by number
# of findings; where the student first departs from its own teacher (scripts/first_divergence.py).
#   bash scripts/student_variant.sh RUN_DIR NAME [echocxr train dcd args ...]
# e.g.  bash scripts/student_variant.sh RUN dcd-b4-grow4-tie0.5 --grow-layers 4
#       TIE_RATIO=0.3 bash scripts/student_variant.sh RUN dcd-b4-tie0.3 --trajectory-tie-ratio 0.3
#       TIE_BREAK=one_step bash scripts/student_variant.sh RUN dcd-b4-tie0.5-onestep --trajectory-tie-break one_step
#       TIE_RATIO_en=0.3 bash scripts/student_variant.sh RUN dcd-b4-tie-en0.3 --trajectory-tie-ratio-for en=0.3
# TIE_RATIO, TIE_BREAK: the tie ratio and tie-break of the teacher the variant's trajectories come from (default
# 0.5 and lowest_id, the recipe's); its left-to-right decode of the test split is
# RUN/eval/rad-sequential-tie<R>[-<tie break>]-b4-LANG. TIE_RATIO_en / TIE_RATIO_zh set one language's.
# Resumable: a finished training or evaluation is not run again. Results: benchmarks/results/builtin_model/
# variants/NAME/. Needs scripts/tie_ratio_student.sh's rows (the installed student and its teacher).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash scripts/student_variant.sh RUN_DIR NAME [train dcd args]" >&2; exit 2; }
RUN=$(cd "$1" && pwd)
NAME=$2
shift 2
E=$PWD/.venv/bin/echocxr
P=$PWD/.venv/bin/python
RECIPE=phantom-builtin
TIE_RATIO=${TIE_RATIO:-0.5}
TIE_BREAK=${TIE_BREAK:-lowest_id}
. scripts/lib/stages.sh  # stage, evaluate: the shared training stage and evaluation row
DATA=$($P -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
stage "$NAME" dcd --from "$RUN/rad-b4/final" --block-length 4 "$@"
OUT=benchmarks/results/builtin_model/variants/$NAME
mkdir -p "$OUT"
cp "$RUN/$NAME/summary.json" "$OUT/train.json"
: > "$OUT/analysis.jsonl"
for lang in en zh; do
  ratio_var=TIE_RATIO_$lang
  ratio=${!ratio_var:-$TIE_RATIO}  # TIE_RATIO_en / TIE_RATIO_zh: a variant with a ratio per language
  teacher=rad-sequential-tie$ratio-b4
  [ "$TIE_BREAK" = lowest_id ] || teacher=rad-sequential-tie$ratio-$TIE_BREAK-b4
  d="$RUN/eval/$NAME-onestep-$lang"
  evaluate "$NAME-onestep" "$RUN/$NAME/final" $lang --decoder onestep
  evaluate "$teacher" "$RUN/rad-b4/final" $lang --decoder multistep --steps 4 --remasking sequential \
    --tie-ratio "$ratio" --tie-break "$TIE_BREAK"
  installed="$RUN/eval/dcd-tie0.5-onestep-b4-$lang"
  for s in "$d" "$RUN/eval/$teacher-$lang"; do cp "$s/summary.json" "$OUT/summary-$(basename "$s").json"; done
  $E eval --summaries "$RUN/eval/ar-$lang" "$RUN/eval/$teacher-$lang" "$installed" "$d" \
    --reference-row "ar-$lang" --table-out "$OUT/table-$lang.md"
  {
    PYTHONPATH=src $P scripts/phrasing_consistency.py $lang "$installed/predictions.jsonl" "$d/predictions.jsonl"
    PYTHONPATH=src $P scripts/validity_by_findings.py "$DATA/test_$lang.json" "$d/predictions.jsonl"
    PYTHONPATH=src $P scripts/first_divergence.py $lang "$RUN/eval/$teacher-$lang/per_sample.jsonl" \
      "$d/per_sample.jsonl" | sed "s#^{#{\"student\": \"$NAME\", \"teacher\": \"$teacher\", #"
  } >> "$OUT/analysis.jsonl"
done
# the targets: the trajectory caches the installed student and the variant were trained on
for run in dcd-b4-tie0.5 "$NAME"; do
  # one cache, or one per tie ratio (a ratio per language: each cache holds both languages at its ratio)
  for CACHE in $($P -c 'import json, sys; p = json.load(open(sys.argv[1]))["trajectories"]["path"]
print(*(p if isinstance(p, list) else [p]))' "$RUN/$run/summary.json"); do
    (cd scripts && PYTHONPATH=../src $P trajectory_phrasing.py "$CACHE" "$RUN/$run/final" "$DATA") \
      | sed "s#^{#{\"run\": \"$run\", #" >> "$OUT/analysis.jsonl"
  done
done
echo "TIE_RATIO=$TIE_RATIO${TIE_RATIO_en:+ TIE_RATIO_en=$TIE_RATIO_en}${TIE_RATIO_zh:+ TIE_RATIO_zh=$TIE_RATIO_zh} TIE_BREAK=$TIE_BREAK bash scripts/student_variant.sh $RUN $NAME $*" > "$OUT/COMMAND"
