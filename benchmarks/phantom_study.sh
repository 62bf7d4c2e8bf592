#!/usr/bin/env bash
# The CXR-Phantom study of the ECHO paper's Tables 1-4 and Fig. 5 (issue #12), on the built-in recipe
# (phantom-builtin). First the built-in run itself (scripts/train_builtin_model.sh: vision -> AR -> RAD -> DCD
# at block lengths 4 and 8; it skips what is finished). Then, from the same AR model, the same Base (RAD)
# teachers and the same teacher trajectories (every distillation run sits beside the built-in stages in
# RUN_DIR, so they share RUN_DIR/trajectories/), at each block length in $LENGTHS:
#   dcd-soft   DCD as the paper has it: soft targets, SW, <eos> CE
#   dcd-hard   the shipped recipe: hard targets, SW, <eos> CE (at L=4 the built-in dcd-b4 itself)
#   ce         a hard-label CE student: hard targets, no SW, no <eos> CE
#   dparallel, cd4lm, d3llm, t3d   the four baselines, each evaluated at its own decoding and at one step
# and at the shipped block length $SHIP the DCD ablations (dcd-soft-nosw, -noeos, -rkl), the raw-report
# pipeline (raw-ar -> raw-rad -> raw-dcd-soft, scored against the raw and the normalised test reports) and the
# RAD data-scale curve (rad-curve: a RAD run keeping every checkpoint, each decoded multi-step). Every row is
# evaluated on the 240 test studies per language, EN and ZH, beside AR, Base multi-step (the paper's setting:
# L steps, low_confidence_dynamic, threshold 0.9) and Base native one-step; the tables
# (benchmarks/phantom_study_tables.py) and the evidence go to benchmarks/results/phantom_study/.
#
#   bash benchmarks/phantom_study.sh [RUN_DIR]          (default runs/builtin)
#   bash benchmarks/phantom_study.sh --list [RUN_DIR]   (or DRY_RUN=1: print every stage and evaluation with
#                                                        its status and exact command; runs nothing)
# Knobs: LENGTHS ("4 8"), SHIP (4), EVAL_ARGS (extra `echocxr eval` arguments for the study's evaluations;
# without them the rows the built-in run evaluated already -- ar, rad-multistep, rad-native-onestep, dcd-onestep-b4
# -- are reused), CURVE_STEPS (2500) and CURVE_EVERY (250: 10 points) of the RAD curve, CURVE_LANGS ("en zh"),
# PARALLEL (1: two lanes side by side, one thread each on 2 cores; 0: one after another).
#
# Time on 2 CPU cores, after the built-in run (~2.3 h): each distillation ~25 min at 3,000 steps (plus ~30 min
# once per new teacher to decode its trajectories: L=8's and the raw teacher's; L=4's is cached), AR ~25 min,
# RAD ~20 min, each evaluation ~2-3 min: 17 distillations, 3 AR/RAD runs and ~80 evaluations, about 8 hours
# with two lanes. Resumable: a finished stage (RUN_DIR/<stage>/final) is skipped, an interrupted one continues
# from its last checkpoint, a finished evaluation (summary.json) is not run again.
# Across sessions: every finished study evaluation is also kept in the repository, under
# benchmarks/results/phantom_study/kept/ar-<hash of the AR model>/ (KEEP_EVALS overrides the folder, KEEP_EVALS=""
# turns it off); in a new run folder with the built-in stages (scripts/builtin_stages.sh restore RUN_DIR), a kept
# row is put back instead of evaluated, and a distillation whose rows are all kept is not trained. Commit the
# kept folder at the end of a session.
# GPU-ready: nothing here is CPU-specific; `echocxr train` and `echocxr eval` pick the device themselves (CUDA
# when there is one), and threads per lane follow the core count. TPS of rows evaluated while the other lane
# trains is measured on a shared machine: compare TPS within one study, TPF anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES_PLAN=0
if [ "${1:-}" = --list ]; then STAGES_PLAN=1; shift; fi
[ "${DRY_RUN:-0}" = 1 ] && STAGES_PLAN=1
RUN=${1:-runs/builtin}
E=.venv/bin/echocxr
PY=.venv/bin/python
RECIPE=phantom-builtin
LENGTHS=${LENGTHS:-"4 8"}
SHIP=${SHIP:-4}
CURVE_STEPS=${CURVE_STEPS:-2500}
CURVE_EVERY=${CURVE_EVERY:-250}
CURVE_LANGS=${CURVE_LANGS:-"en zh"}
PARALLEL=${PARALLEL:-1}
BASELINES="dparallel cd4lm d3llm t3d"
OUTDIR=benchmarks/results/phantom_study
read -r -a EXTRA_EVAL <<< "${EVAL_ARGS:-}"
for L in $LENGTHS $SHIP; do
  case $L in 4|8) ;; *) echo "block length $L: the built-in recipe trains Base at 4 and 8 only" >&2; exit 2;; esac
done
if [ "$STAGES_PLAN" != 1 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then  # one lane per core share
  n=$(nproc 2>/dev/null || echo 2)
  if [ "$PARALLEL" = 1 ]; then n=$((n / 2)); fi
  export OMP_NUM_THREADS=$((n > 0 ? n : 1))
fi
source scripts/lib/stages.sh

# 0. the built-in run: vision, AR, RAD and DCD at L=4 and 8, its evaluations and tables
if [ "$STAGES_PLAN" = 1 ]; then
  status=done; [ -f "$RUN/eval/table_zh.md" ] || status=todo
  for L in $SHIP $LENGTHS; do [ -f "$RUN/dcd-b$L/final/config.json" ] || status=todo; done
  echo "builtin $status $RUN: SHIP=$SHIP LENGTHS=\"$LENGTHS\" bash scripts/train_builtin_model.sh $RUN"
else
  SHIP=$SHIP LENGTHS="$LENGTHS" bash scripts/train_builtin_model.sh "$RUN"
fi
if [ -f "$RUN/ar/summary.json" ]; then  # the phantom set the recipe rendered (the AR run's summary names it)
  DATA=$($PY -c 'import json, os, sys; print(os.path.realpath(json.load(open(sys.argv[1]))["data"]))' "$RUN/ar/summary.json")
else
  DATA='$DATA'  # only in a listing before the built-in run: its AR summary names the data
fi
RAW=$RUN/raw-data
teacher() { if [ "$1" = 4 ]; then echo rad-b4; else echo rad-b8-continued; fi; }
hard_dir() { if [ "$1" = 4 ]; then echo dcd-b4; else echo "dcd-hard-b$1"; fi; }  # the built-in dcd-b4 is the recipe
multistep() { echo "--decoder multistep --steps $1 --remasking low_confidence_dynamic --threshold 0.9"; }
# Rows kept across sessions (scripts/lib/stages.sh, KEEP_EVALS): each finished study evaluation is copied to
# $OUTDIR/kept/ar-<first 12 hex of the AR model's sha256>/, so rows of another AR model are never mixed in
if [ -z "${KEEP_EVALS+set}" ] && [ -f "$RUN/ar/final/model.safetensors" ]; then
  KEEP_EVALS=$OUTDIR/kept/ar-$(sha256sum "$RUN/ar/final/model.safetensors" | cut -c1-12)
fi
all_kept() {  # all_kept LANGS ROW...: every ROW is evaluated (or kept) in every language of LANGS
  local langs=$1 row lang k; shift
  [ ${#EXTRA_EVAL[@]} = 0 ] || return 1  # kept rows have the default settings
  for row; do for lang in $langs; do
    [ -f "$RUN/eval-study/$row-$lang/summary.json" ] && continue
    k=$(kept_eval "$RUN/eval-study/$row-$lang"); [ -n "$k" ] && [ -f "$k" ] || return 1
  done; done
}
stage_for() {  # stage_for "ROW..." DIR STAGE [args]: train DIR unless every row it is made for is kept
  # (in EN and ZH, or in the caller's KEPT_LANGS)
  local rows=$1; shift
  if [ ! -f "$RUN/$1/final/config.json" ] && all_kept "${KEPT_LANGS:-en zh}" $rows; then
    if [ "$STAGES_PLAN" = 1 ]; then echo "train done $1: not needed, its rows are kept ($rows)"
    else echo "stage $1: not trained, its rows are kept ($rows)"; fi
    return
  fi
  stage "$@"
}

study_eval() {  # study_eval MANIFEST ROW MODEL LANG [decoder args]: RUN/eval-study/ROW-LANG
  local manifest=$1 row=$2 model=$3 lang=$4; shift 4
  evaluate_on "$manifest" "$RUN/eval-study/$row-$lang" "$model" "$@" ${EXTRA_EVAL[@]+"${EXTRA_EVAL[@]}"}
}
ev() { local row=$1 model=$2 lang=$3; shift 3; study_eval "$DATA/test_$lang.json" "$row" "$model" "$lang" "$@"; }
reuse() {  # reuse BUILTIN_ROW ROW MODEL LANG [decoder args]: the built-in run's evaluation of the same model and
  # decoding (RUN/eval/BUILTIN_ROW-LANG, which the tables read) unless EVAL_ARGS asks for other settings
  local old=$1 row=$2 model=$3 lang=$4; shift 4
  if [ ${#EXTRA_EVAL[@]} = 0 ]; then
    if [ "$STAGES_PLAN" = 1 ]; then
      local status=todo; [ -f "$RUN/eval/$old-$lang/summary.json" ] && status=done
      echo "eval reuse eval-study/$row-$lang: eval/$old-$lang ($status, scripts/train_builtin_model.sh)"
    fi
    return
  fi
  ev "$row" "$model" "$lang" "$@"
}
eval_both() {  # eval_both ROW MODEL [decoder args]: EN and ZH
  local row=$1 model=$2 lang; shift 2
  for lang in en zh; do ev "$row" "$model" $lang "$@"; done
}

grid() {  # every method at block length $1, from the teacher the built-in run trained
  local L=$1 T b; T=$RUN/$(teacher "$1")/final
  local base=(--from "$T" --block-length "$L")
  for lang in en zh; do
    reuse "rad-multistep-b$L" "base-multistep-b$L" "$T" $lang $(multistep "$L")
    reuse "rad-native-onestep-b$L" "base-onestep-b$L" "$T" $lang --decoder onestep
  done
  stage_for "dcd-soft-b$L" "dcd-soft-b$L" dcd "${base[@]}" --dcd-target soft
  eval_both "dcd-soft-b$L" "$RUN/dcd-soft-b$L/final" --decoder onestep
  if [ "$L" = 4 ]; then  # the built-in model itself (trained by its script)
    stage dcd-b4 dcd "${base[@]}"
    for lang in en zh; do reuse dcd-onestep-b4 dcd-hard-b4 "$RUN/dcd-b4/final" $lang --decoder onestep; done
  else
    stage_for "dcd-hard-b$L" "$(hard_dir "$L")" dcd "${base[@]}"
    eval_both "dcd-hard-b$L" "$RUN/$(hard_dir "$L")/final" --decoder onestep
  fi
  stage_for "ce-b$L" "ce-b$L" dcd "${base[@]}" --dcd-target hard --no-sw --eos-ce 0
  eval_both "ce-b$L" "$RUN/ce-b$L/final" --decoder onestep
  for b in $BASELINES; do
    stage_for "$b-b$L $b-onestep-b$L" "$b-b$L" "$b" "${base[@]}"
    eval_both "$b-b$L" "$RUN/$b-b$L/final"  # the decoding its paper reports (saved with the model)
    eval_both "$b-onestep-b$L" "$RUN/$b-b$L/final" --decoder onestep
  done
}

ablations() {  # Table 2 at the shipped block length: DCD (soft) without SW, without <eos> CE, with reverse KL
  local S=$SHIP; local base=(--from "$RUN/$(teacher "$S")/final" --block-length "$S" --dcd-target soft)
  stage_for "dcd-soft-nosw-b$S" "dcd-soft-nosw-b$S" dcd "${base[@]}" --no-sw
  eval_both "dcd-soft-nosw-b$S" "$RUN/dcd-soft-nosw-b$S/final" --decoder onestep
  stage_for "dcd-soft-noeos-b$S" "dcd-soft-noeos-b$S" dcd "${base[@]}" --eos-ce 0
  eval_both "dcd-soft-noeos-b$S" "$RUN/dcd-soft-noeos-b$S/final" --decoder onestep
  stage_for "dcd-soft-rkl-b$S" "dcd-soft-rkl-b$S" dcd "${base[@]}" --rkl
  eval_both "dcd-soft-rkl-b$S" "$RUN/dcd-soft-rkl-b$S/final" --decoder onestep
}

raw_data() {  # RUN/raw-data: the phantom set's raw (reporting-by-exception) manifests under the usual names
  [ "$STAGES_PLAN" = 1 ] && { echo "data raw-data: $RAW/<split>_<lang>.json -> $DATA/<split>_<lang>_raw.json"; return; }
  mkdir -p "$RAW"
  local split lang
  for split in train val test; do for lang in en zh; do
    ln -sfn "$DATA/${split}_${lang}_raw.json" "$RAW/${split}_${lang}.json"
  done; done
  ln -sfn "$DATA/images" "$RAW/images"  # the manifests name their images relative to their folder
}

raw() {  # Table 4: AR -> RAD -> DCD (soft) on raw reports, as the normalised pipeline at block length $SHIP
  local S=$SHIP RT lang rows="" r
  for r in raw-ar raw-base-multistep-b$S raw-dcd-soft-b$S; do rows="$rows $r $r-normref"; done
  raw_data
  stage_for "$rows" raw-ar ar --from "$RUN/vision/final" --data "$RAW"
  if [ "$S" = 4 ]; then
    stage_for "$rows" raw-rad-b4 rad --from "$RUN/raw-ar/final" --data "$RAW" --block-length 4 --max-steps 2500; RT=raw-rad-b4
  else  # as the built-in L=8 teacher: 1,000 steps, then 2,500 more from a warm restart
    stage_for "$rows" raw-rad-b8 rad --from "$RUN/raw-ar/final" --data "$RAW" --block-length 8
    stage_for "$rows" raw-rad-b8-continued rad --from "$RUN/raw-rad-b8/final" --data "$RAW" --block-length 8 --max-steps 2500
    RT=raw-rad-b8-continued
  fi
  stage_for "$rows" "raw-dcd-soft-b$S" dcd --from "$RUN/$RT/final" --data "$RAW" --block-length "$S" --dcd-target soft
  for lang in en zh; do
    local m
    for m in raw norm; do  # scored against the raw test reports, and against the normalised ones (the paper's)
      local man=$DATA/test_${lang}_raw.json sfx=""
      [ $m = norm ] && { man=$DATA/test_$lang.json; sfx=-normref; }
      study_eval "$man" "raw-ar$sfx" "$RUN/raw-ar/final" $lang --decoder ar
      study_eval "$man" "raw-base-multistep-b$S$sfx" "$RUN/$RT/final" $lang $(multistep "$S")
      study_eval "$man" "raw-dcd-soft-b$S$sfx" "$RUN/raw-dcd-soft-b$S/final" $lang --decoder onestep
    done
  done
}

curve_steps() { local s; for s in $(seq "$CURVE_EVERY" "$CURVE_EVERY" "$CURVE_STEPS"); do echo "$s"; done
  [ $((CURVE_STEPS % CURVE_EVERY)) = 0 ] || echo "$CURVE_STEPS"; }
curve_row() { printf 'rad-curve-b%s-step%07d' "$SHIP" "$1"; }  # curve_row STEP: the row of one checkpoint
curve() {  # Fig. 5: RAD at block length $SHIP keeping a checkpoint every $CURVE_EVERY steps, each decoded multi-step
  local S=$SHIP step ck lang rows="" KEPT_LANGS=$CURVE_LANGS  # stage_for checks the curve's languages
  for step in $(curve_steps); do rows="$rows $(curve_row "$step")"; done
  stage_for "$rows" "rad-curve-b$S" rad --from "$RUN/ar/final" --block-length "$S" --max-steps "$CURVE_STEPS" \
    --save-every "$CURVE_EVERY" --keep-checkpoints 0
  for step in $(curve_steps); do
    ck=$(printf '%s/rad-curve-b%s/checkpoint-%07d' "$RUN" "$S" "$step")
    if [ "$STAGES_PLAN" != 1 ] && [ ! -f "$ck/config.json" ] && ! all_kept "$CURVE_LANGS" "$(curve_row "$step")"; then
      echo "rad-curve: no $ck, skipped" >&2; continue
    fi
    for lang in $CURVE_LANGS; do ev "$(curve_row "$step")" "$ck" $lang $(multistep "$S"); done
  done
}
raw_and_curve() { raw; curve; }

lanes() {  # lanes NAME:FUNCTION ...: side by side (log RUN/study-NAME.log), or one after another
  local spec
  if [ "$STAGES_PLAN" = 1 ] || [ "$PARALLEL" != 1 ]; then
    for spec; do "${spec#*:}"; done
    return
  fi
  local pids=() names=() i fail=0
  for spec; do
    ( "${spec#*:}" ) > "$RUN/study-${spec%%:*}.log" 2>&1 &
    pids+=($!); names+=("${spec%%:*}")
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "lane ${names[$i]} failed: see $RUN/study-${names[$i]}.log" >&2; fail=1; }
  done
  return $fail
}

for lang in en zh; do reuse ar ar "$RUN/ar/final" $lang --decoder ar; done
specs=(); for L in $LENGTHS; do specs+=("b$L:grid_b$L"); done
grid_b4() { grid 4; }
grid_b8() { grid 8; }
lanes "${specs[@]}"
lanes "ablations-b$SHIP:ablations" "raw-curve-b$SHIP:raw_and_curve"

# tables, plots and the evidence
TABLE_ARGS=(--lengths "$LENGTHS" --ship "$SHIP" --curve-steps "$(curve_steps | paste -sd " ")")
if [ "$STAGES_PLAN" = 1 ]; then
  echo "tables: $PY benchmarks/phantom_study_tables.py $RUN $RUN/study-tables ${TABLE_ARGS[*]@Q}"
  exit 0
fi
$PY benchmarks/phantom_study_tables.py "$RUN" "$RUN/study-tables" "${TABLE_ARGS[@]}"
mkdir -p "$OUTDIR/configs"
cp -r "$RUN/study-tables/." "$OUTDIR/"
for f in "$RUN"/*/train_config.json; do cp "$f" "$OUTDIR/configs/$(basename "$(dirname "$f")").json"; done
CMD="LENGTHS=\"$LENGTHS\" SHIP=$SHIP CURVE_STEPS=$CURVE_STEPS CURVE_EVERY=$CURVE_EVERY CURVE_LANGS=\"$CURVE_LANGS\""
[ -n "${EVAL_ARGS:-}" ] && CMD="$CMD EVAL_ARGS=\"$EVAL_ARGS\""
echo "$CMD bash benchmarks/phantom_study.sh $RUN" > "$OUTDIR/COMMAND"
# every stage and evaluation with its exact command, as run (now all done)
LENGTHS=$LENGTHS SHIP=$SHIP CURVE_STEPS=$CURVE_STEPS CURVE_EVERY=$CURVE_EVERY CURVE_LANGS=$CURVE_LANGS \
  bash benchmarks/phantom_study.sh --list "$RUN" > "$OUTDIR/plan.txt"
echo "study written to $OUTDIR"
