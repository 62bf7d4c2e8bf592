# Resumable training stages and evaluation rows, sourced by scripts/train_builtin_model.sh and
# benchmarks/phantom_study.sh (bash; not run on its own).
#   stage DIR STAGE [train args]       train $RUN/DIR (skipped when DIR/final is there, --resume when DIR/latest is)
#   evaluate NAME MODEL LANG [args]    score MODEL on $DATA/test_LANG.json into $RUN/eval/NAME-LANG
#   evaluate_on MANIFEST OUT MODEL [args]   the same with any manifest and output folder
# The caller sets RUN (run folder), E (the echocxr command), RECIPE (the --config), and DATA before evaluate.
# With STAGES_PLAN=1 (a shell variable, not inherited by child scripts) nothing runs: each stage and evaluation
# prints one line instead, `train|eval STATUS WHAT: COMMAND`, STATUS done, resume (train) or todo.

stage() {  # stage DIR STAGE [extra args]
  local dir=$1 name=$2; shift 2
  if [ "${STAGES_PLAN:-0}" = 1 ]; then
    local status=todo resume=""
    [ -f "$RUN/$dir/latest" ] && { status=resume; resume=" --resume"; }
    [ -f "$RUN/$dir/final/config.json" ] && status=done
    echo "train $status $dir: $E train $name --config $RECIPE --lang en,zh --out $RUN/$dir --no-progress$resume${*:+ $*}"
    return
  fi
  if [ -f "$RUN/$dir/final/config.json" ]; then echo "stage $dir: done already"; return; fi
  local resume=""
  [ -f "$RUN/$dir/latest" ] && resume="--resume"
  $E train "$name" --config $RECIPE --lang en,zh --out "$RUN/$dir" --no-progress $resume "$@"
}

evaluate_on() {  # evaluate_on MANIFEST OUT_DIR MODEL [decoder args]
  local manifest=$1 out=$2 model=$3; shift 3
  if [ "${STAGES_PLAN:-0}" = 1 ]; then
    local status=todo
    [ -f "$out/summary.json" ] && status=done
    echo "eval $status ${out#"$RUN"/}: $E eval --model $model --manifest $manifest --max-new-tokens 256" \
      "--gen-batch-size 16 --protocol raw --out $out${*:+ $*}"
    return
  fi
  if [ -f "$out/summary.json" ]; then return; fi
  $E eval --model "$model" --manifest "$manifest" --max-new-tokens 256 --gen-batch-size 16 \
    --protocol raw --out "$out" "$@"
}

evaluate() {  # evaluate NAME MODEL LANG [decoder args]
  local name=$1 model=$2 lang=$3; shift 3
  evaluate_on "$DATA/test_$lang.json" "$RUN/eval/$name-$lang" "$model" "$@"
}
