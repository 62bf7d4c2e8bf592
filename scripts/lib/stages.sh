# Resumable training stages and evaluation rows, sourced by scripts/train_builtin_model.sh and
# benchmarks/phantom_study.sh (bash; not run on its own).
#   stage DIR STAGE [train args]       train $RUN/DIR (skipped when DIR/final is there, --resume when DIR/latest is)
#   evaluate NAME MODEL LANG [args]    score MODEL on $DATA/test_LANG.json into $RUN/eval/NAME-LANG
#   evaluate_on MANIFEST OUT MODEL [args]   the same with any manifest and output folder
# The caller sets RUN (run folder), E (the echocxr command), RECIPE (the --config), and DATA before evaluate.
# With KEEP_EVALS set (a folder, e.g. in the repository), every finished evaluation under RUN is also kept there
# as KEEP_EVALS/<its path under RUN>.json, and one kept there is put back instead of run again: a study that
# takes several sessions keeps its rows when the run folder does not survive.
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

kept_eval() {  # kept_eval OUT_DIR: the file KEEP_EVALS keeps OUT_DIR's summary in (nothing without KEEP_EVALS)
  [ -n "${KEEP_EVALS:-}" ] && [ "${1#"$RUN"/}" != "$1" ] && echo "$KEEP_EVALS/${1#"$RUN"/}.json"
  return 0
}

evaluate_on() {  # evaluate_on MANIFEST OUT_DIR MODEL [decoder args]
  local manifest=$1 out=$2 model=$3; shift 3
  local kept; kept=$(kept_eval "$out")
  if [ "${STAGES_PLAN:-0}" = 1 ]; then
    local status=todo
    [ -f "$out/summary.json" ] && status=done
    [ -n "$kept" ] && [ -f "$kept" ] && status=done
    echo "eval $status ${out#"$RUN"/}: $E eval --model $model --manifest $manifest --max-new-tokens 256" \
      "--gen-batch-size 16 --protocol raw --out $out${*:+ $*}"
    return
  fi
  if [ ! -f "$out/summary.json" ]; then
    if [ -n "$kept" ] && [ -f "$kept" ]; then
      mkdir -p "$out" && cp "$kept" "$out/summary.json" && echo "eval ${out#"$RUN"/}: kept in $kept"
      return
    fi
    $E eval --model "$model" --manifest "$manifest" --max-new-tokens 256 --gen-batch-size 16 \
      --protocol raw --out "$out" "$@"
  fi
  if [ -n "$kept" ] && ! cmp -s "$out/summary.json" "$kept"; then
    mkdir -p "$(dirname "$kept")" && cp "$out/summary.json" "$kept"
  fi
}

evaluate() {  # evaluate NAME MODEL LANG [decoder args]
  local name=$1 model=$2 lang=$3; shift 3
  evaluate_on "$DATA/test_$lang.json" "$RUN/eval/$name-$lang" "$model" "$@"
}
