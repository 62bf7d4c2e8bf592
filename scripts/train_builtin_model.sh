#!/usr/bin/env bash
# Train the built-in model on CXR-Phantom (English + Chinese, CPU): vision pretraining -> AR -> RAD -> DCD at
# the shipped block length ($SHIP, default 4: its one-step reports hold up better than 8's, STUDY.md §3c),
# evaluate every stage and decoder on the 240 test studies per language and keep the evidence in
# benchmarks/results/builtin_model/. With INSTALL=1 the DCD model is installed as the package's built-in model
# (src/echocxr/assets/demo_model). LENGTHS="4 8" also trains and reports block length 8.
#   INSTALL=1 bash scripts/train_builtin_model.sh [RUN_DIR]   (default runs/builtin; about 2.5 hours on 2 CPU cores;
#   LENGTHS="4 8": about 1.5 hours more)
# Resumable: a finished stage (RUN_DIR/<stage>/final) is skipped, an interrupted one continues from its last
# checkpoint, a finished evaluation (summary.json) is not run again.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/builtin}
mkdir -p "$RUN"
E=.venv/bin/echocxr
RECIPE=phantom-builtin
SHIP=${SHIP:-4}
# the shipped block length first, then any other of LENGTHS (4 and/or 8)
LENGTHS=$(for L in $SHIP ${LENGTHS:-}; do echo "$L"; done | awk '!seen[$0]++' | tr '\n' ' ')
for L in $LENGTHS; do
  case $L in 4|8) ;; *) echo "block length $L: the built-in recipe trains 4 and 8 only" >&2; exit 2;; esac
done
# one stage at a time, on every core
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
# stage DIR STAGE [args] (skips a finished stage, resumes an interrupted one) and evaluate NAME MODEL LANG [args]
STAGES_PLAN=0  # always run (the helper can also only list, for benchmarks/phantom_study.sh)
source scripts/lib/stages.sh
stages_of() { if [ "$1" = 4 ]; then echo "rad-b4 dcd-b4"; else echo "rad-b8 rad-b8-continued dcd-b8"; fi; }
train_length() {
  if [ "$1" = 4 ]; then  # RAD 2,500 steps, then DCD (the recipe's trajectories: tie ratio 0.3, ZH with the image tie-break)
    stage rad-b4 rad --from "$RUN/ar/final" --block-length 4 --max-steps 2500
    stage dcd-b4 dcd --from "$RUN/rad-b4/final" --block-length 4
  else  # RAD 1,000 steps, 2,500 more from a warm restart (new warmup and cosine), then DCD
    stage rad-b8 rad --from "$RUN/ar/final" --block-length 8
    stage rad-b8-continued rad --from "$RUN/rad-b8/final" --block-length 8 --max-steps 2500
    # as trained before §3d (the plain argmax teacher, 4,000 studies per language), kept as measured
    stage dcd-b8 dcd --from "$RUN/rad-b8-continued/final" --block-length 8 --trajectory-tie-ratio 0 \
      --trajectory-tie-ratio-for en=0 --max-examples 4000
  fi
}
teacher() { if [ "$1" = 4 ]; then echo rad-b4; else echo rad-b8-continued; fi; }
stage vision vision ${VISION_STEPS:+--max-steps "$VISION_STEPS"}  # VISION_STEPS=N: another length (STUDY.md §7)
stage ar ar --from "$RUN/vision/final"
for L in $LENGTHS; do train_length "$L"; done
# the phantom set the recipe rendered (its summary names it: the cache, or beside older runs)
DATA=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' "$RUN/ar/summary.json")
ROWS="ar"
for L in $LENGTHS; do ROWS="$ROWS rad-multistep-b$L rad-sequential-b$L rad-native-onestep-b$L dcd-onestep-b$L"; done
for lang in en zh; do
  evaluate ar "$RUN/ar/final" $lang --decoder ar
  for L in $LENGTHS; do
    T=$(teacher $L)
    evaluate rad-multistep-b$L "$RUN/$T/final" $lang --decoder multistep --steps $L --remasking low_confidence_dynamic --threshold 0.9
    # the teacher as DCD's trajectories decode it (recipe: trajectory_remasking sequential): left to right
    evaluate rad-sequential-b$L "$RUN/$T/final" $lang --decoder multistep --steps $L --remasking sequential
    evaluate rad-native-onestep-b$L "$RUN/$T/final" $lang --decoder onestep
    evaluate dcd-onestep-b$L "$RUN/dcd-b$L/final" $lang --decoder onestep
  done
  dirs=""; for r in $ROWS; do dirs="$dirs $RUN/eval/$r-$lang"; done
  $E eval --summaries $dirs --reference-row "ar-$lang" --table-out "$RUN/eval/table_$lang.md" \
    --plot-out "$RUN/eval/quality_vs_tpf_$lang.png"
done
# keep the evidence (and, with INSTALL=1, install the DCD model as the built-in model)
OUTDIR=benchmarks/results/builtin_model
mkdir -p $OUTDIR
for lang in en zh; do
  cp "$RUN/eval/table_$lang.md" "$RUN/eval/quality_vs_tpf_$lang.png" $OUTDIR/
  for r in $ROWS; do cp "$RUN/eval/$r-$lang/summary.json" "$OUTDIR/summary-$r-$lang.json"; done
done
for s in vision ar; do cp "$RUN/$s/summary.json" "$OUTDIR/train-$s.json"; done
for L in $LENGTHS; do for s in $(stages_of $L); do cp "$RUN/$s/summary.json" "$OUTDIR/train-$s.json"; done; done
SHIPPED=$(stages_of $SHIP)
.venv/bin/python scripts/write_builtin_card.py "$RUN" "$RUN/dcd-b$SHIP/final" vision ar $SHIPPED
cp "$RUN/dcd-b$SHIP/final/MODEL_CARD.md" $OUTDIR/MODEL_CARD.md
if [ "${INSTALL:-0}" = 1 ]; then
  rm -rf src/echocxr/assets/demo_model && mkdir -p src/echocxr/assets
  cp -r "$RUN/dcd-b$SHIP/final" src/echocxr/assets/demo_model
fi
echo "${VISION_STEPS:+VISION_STEPS=$VISION_STEPS }SHIP=$SHIP LENGTHS=\"$LENGTHS\" INSTALL=${INSTALL:-0} bash scripts/train_builtin_model.sh $RUN" > $OUTDIR/COMMAND
