#!/usr/bin/env bash
# Keep the built-in run's early stages in the repository, or put them back into a run folder, so that work
# which starts from them (DCD variants: scripts/student_variant.sh; the phantom study at L=4:
# benchmarks/phantom_study.sh) need not train vision -> AR -> RAD again (about 70 minutes on 2 CPU cores) on a
# machine where the run folder did not survive.
#   bash scripts/builtin_stages.sh keep RUN_DIR      RUN_DIR/<stage>/final -> benchmarks/results/builtin_model/stages/<stage>
#   bash scripts/builtin_stages.sh restore RUN_DIR   the reverse; a stage RUN_DIR already has is left as it is
# Each kept stage is its final model (a loadable model directory) with the run's summary.json and
# train_config.json beside it. The phantom set is not kept: the next training stage renders it again
# (the same seed gives the same studies).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash scripts/builtin_stages.sh keep|restore RUN_DIR"
[ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
ACTION=$1
RUN=$2
KEPT=${KEPT:-benchmarks/results/builtin_model/stages}  # KEPT=DIR: another run's stages (e.g. a variant's)
STAGES=${STAGES:-"vision ar rad-b4"}
case $ACTION in
  keep)
    for s in $STAGES; do
      [ -f "$RUN/$s/final/config.json" ] || { echo "$RUN/$s/final: not a finished stage" >&2; exit 1; }
    done
    for s in $STAGES; do
      rm -rf "${KEPT:?}/$s.tmp" && mkdir -p "$KEPT/$s.tmp"
      cp -r "$RUN/$s/final" "$KEPT/$s.tmp/final"
      cp "$RUN/$s/summary.json" "$RUN/$s/train_config.json" "$KEPT/$s.tmp/"
      rm -rf "${KEPT:?}/$s" && mv "$KEPT/$s.tmp" "$KEPT/$s"
      echo "kept $s"
    done
    ;;
  restore)
    for s in $STAGES; do
      [ -f "$KEPT/$s/final/config.json" ] || { echo "$KEPT/$s: no kept stage (run keep first)" >&2; exit 1; }
    done
    for s in $STAGES; do
      if [ -f "$RUN/$s/final/config.json" ]; then echo "$s: $RUN/$s is finished already, left as it is"; continue; fi
      if [ -e "$RUN/$s" ]; then echo "$RUN/$s holds an unfinished run: move it away first" >&2; exit 1; fi
      mkdir -p "$RUN/$s"
      cp -r "$KEPT/$s/final" "$RUN/$s/final"
      cp "$KEPT/$s/summary.json" "$KEPT/$s/train_config.json" "$RUN/$s/"
      echo "restored $s"
    done
    ;;
  *) echo "$usage" >&2; exit 2;;
esac
