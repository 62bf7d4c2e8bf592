#!/usr/bin/env bash
# Decoding speed of every decoder on one GPU (H100/H200), Qwen2.5-VL-7B shape with random bf16 weights, one
# 512x512 image (~330 vision tokens) + the instruction, EOS ignored, batch 1, 8 and 32, all in ONE run.
# Needs only torch + transformers (tested against the project's pins; meant for torch 2.11 + transformers 5.17),
# no network, no checkpoint: the weights are random (speed does not depend on their values).
#
#   bash benchmarks/gpu_decode.sh [OUT_DIR]        (default: $OUT, else benchmarks/results/decode_gpu)
#   DRY_RUN=1 bash benchmarks/gpu_decode.sh DIR    (the same python on CPU, built-in model, a few tokens)
#
# Environment knobs: PYTHON (default: python3), NEW_TOKENS (256), BATCH_SIZES (1,8,32), TIME_LIMIT_S (450),
# COMPILE (1: CUDA graphs of the fast path's step, the GPU default; 0: eager, the dry-run default: inductor on
# CPU would spend minutes compiling).
# Writes OUT_DIR/decode_7b.json, OUT_DIR/decode_7b.md (the ratio table), OUT_DIR/COMMAND, OUT_DIR/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/results/decode_gpu}}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
if [ "${DRY_RUN:-0}" = "1" ]; then
  SHAPE=builtin DEVICE=cpu BATCHES=${BATCH_SIZES:-1,2} TOKENS=${NEW_TOKENS:-8} COMPILE=${COMPILE:-0}
else
  SHAPE=7b DEVICE=cuda BATCHES=${BATCH_SIZES:-1,8,32} TOKENS=${NEW_TOKENS:-256} COMPILE=${COMPILE:-1}
fi
COMPILE_FLAG=$([ "$COMPILE" = "1" ] && echo True || echo False)
echo "DRY_RUN=${DRY_RUN:-0} NEW_TOKENS=$TOKENS BATCH_SIZES=$BATCHES COMPILE=$COMPILE bash benchmarks/gpu_decode.sh $OUT_DIR" \
  > "$OUT_DIR/COMMAND"
if [ "$DEVICE" = cuda ]; then nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
timeout "${TIME_LIMIT_S:-450}" "$PY" - "$SHAPE" "$DEVICE" "$BATCHES" "$TOKENS" "$COMPILE_FLAG" "$OUT_DIR" <<'EOF' 2>&1 | tee "$OUT_DIR/log.txt"
import json, sys, time
from pathlib import Path

shape, device, batches, tokens, compile_flag, out_dir = sys.argv[1:7]
t0 = time.perf_counter()
import torch  # noqa: E402

from echocxr.decoding.bench import BenchOptions, ratio_table, run_bench  # noqa: E402

out = Path(out_dir)
opts = BenchOptions(shape=shape, device=device, batch_sizes=tuple(int(b) for b in batches.split(",")),
                    new_tokens=int(tokens), compile=compile_flag == "True", repeats=1)
partial = out / f"decode_{shape}.json"


def progress(msg):
    print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


def save(result):  # after every row: a run cut short by the time limit keeps what it measured
    result["environment"]["command"] = (out / "COMMAND").read_text().strip()
    result["environment"]["wall_s"] = time.perf_counter() - t0
    partial.write_text(json.dumps(result, indent=1) + "\n")
    (out / f"decode_{shape}.md").write_text(ratio_table(result) + "\n")


result = run_bench(opts, progress=progress, on_update=save)
save(result)
print(ratio_table(result))
print(f"wrote {partial} in {time.perf_counter() - t0:.0f} s", flush=True)
EOF
