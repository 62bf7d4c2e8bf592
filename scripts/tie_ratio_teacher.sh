#!/usr/bin/env bash
# The DCD teacher decoded as its trajectories are (left to right) with a canonical tie-break of ratio R
# (`--tie-ratio`), on the CXR-Phantom test split: quality, and how consistently it phrases each statement
# (scripts/phrasing_consistency.py; R=0 is the plain argmax), and the findings each ratio loses or gains against
# the plain argmax (scripts/tie_losses.py). STUDY.md §3d chose R from these rows; §5 reads them on the fresh run.
#   [OUT=DIR] [RATIOS="0.3 0.5 0.7"] [TIE_BREAK=image [MARGINS="1 2"]] [LANGS="en zh"] \
#     bash scripts/tie_ratio_teacher.sh [RUN_DIR] [BLOCK_LENGTH]
# TIE_BREAK: the rule a tie goes to (--tie-break; default lowest_id); MARGINS: with image, the --tie-margin values
# (default: the engine's). A row is rad-sequential-tie<R>[-<tie break>][-m<margin>]-b<L>-<lang>.
# RUN_DIR from scripts/train_builtin_model.sh (or its kept stages: scripts/builtin_stages.sh restore RUN_DIR);
# OUT defaults to benchmarks/results/builtin_model/tie_ratio (the first run's rows).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/builtin}
L=${2:-4}
RATIOS=${RATIOS:-"0.3 0.5 0.7"}
TIE_BREAK=${TIE_BREAK:-lowest_id}
MARGINS=${MARGINS:-}
LANGS=${LANGS:-"en zh"}
if [ "$L" = 8 ]; then TEACHER=rad-b8-continued; else TEACHER=rad-b$L; fi
E=.venv/bin/echocxr
. scripts/lib/stages.sh  # evaluate: the shared evaluation row
DATA=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
OUT=${OUT:-benchmarks/results/builtin_model/tie_ratio}  # OUT=...: another run's rows beside the first run's
mkdir -p "$OUT"
: > "$OUT/phrasing_consistency.jsonl"
: > "$OUT/tie_losses.jsonl"
for lang in $LANGS; do
  # the AR and plain left-to-right rows, as scripts/train_builtin_model.sh evaluates them (skipped when there)
  evaluate ar "$RUN/ar/final" $lang --decoder ar
  evaluate "rad-sequential-b$L" "$RUN/$TEACHER/final" $lang --decoder multistep --steps $L --remasking sequential
  rows="$RUN/eval/ar-$lang $RUN/eval/rad-sequential-b$L-$lang"
  for r in $RATIOS; do
    for m in ${MARGINS:-engine}; do
      name=rad-sequential-tie$r; args=(--tie-ratio "$r"); tag="\"tie_ratio\": $r"
      if [ "$TIE_BREAK" != lowest_id ]; then
        name=$name-$TIE_BREAK; args+=(--tie-break "$TIE_BREAK"); tag="$tag, \"tie_break\": \"$TIE_BREAK\""
      fi
      if [ "$m" != engine ]; then name=$name-m$m; args+=(--tie-margin "$m"); tag="$tag, \"tie_margin\": $m"; fi
      evaluate "$name-b$L" "$RUN/$TEACHER/final" $lang --decoder multistep --steps $L --remasking sequential \
        "${args[@]}"
      rows="$rows $RUN/eval/$name-b$L-$lang"
      # the findings the tie-break loses or gains against the plain argmax, and where the decodes part
      .venv/bin/python scripts/tie_losses.py "$RUN/eval/rad-sequential-b$L-$lang/per_sample.jsonl" \
        "$RUN/eval/$name-b$L-$lang/per_sample.jsonl" \
        | sed "s#^{#{\"language\": \"$lang\", $tag, #" >> "$OUT/tie_losses.jsonl"
    done
  done
  $E eval --summaries $rows --reference-row "ar-$lang" --table-out "$OUT/table_$lang.md"
  preds=""; for d in $rows; do preds="$preds $d/predictions.jsonl"; cp "$d/summary.json" "$OUT/summary-$(basename "$d").json"; done
  .venv/bin/python scripts/phrasing_consistency.py $lang $preds >> "$OUT/phrasing_consistency.jsonl"
done
vars="OUT=$OUT RATIOS=\"$RATIOS\""
[ "$TIE_BREAK" = lowest_id ] || vars="$vars TIE_BREAK=$TIE_BREAK"
[ -z "$MARGINS" ] || vars="$vars MARGINS=\"$MARGINS\""
[ "$LANGS" = "en zh" ] || vars="$vars LANGS=\"$LANGS\""
echo "$vars bash scripts/tie_ratio_teacher.sh $RUN $L" > "$OUT/COMMAND"
