#!/usr/bin/env bash
# Runs `kvq compare --preset quick` on every task with the mechanisms its paper compares (the
# task registry's, `kvq compare`'s default), one comparison directory per task under
# ${1:-runs/quick}. Sequential; resumes an interrupted run. mnist, cifar10 and cifar100 need
# data_dir and are left out.
# Usage: scripts/compare_quick.sh [out-dir] [task ...]   (default: every task below)
# KVQ names the CLI (default ./build/kvq).
set -euo pipefail
cd "$(dirname "$0")/.."
kvq="${KVQ:-./build/kvq}"
out="${1:-runs/quick}"
shift || true
order=(icl-linear icl-gp icl-sinusoid few-shot distill reverse sort copy sub swap human-numbers
       char-lm fashion-mnist translation)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=("${order[@]}")
for task in "${tasks[@]}"; do
  dir="$out/$task"
  resume=()
  [ -d "$dir" ] && resume=(--resume)
  echo "== $task -> $dir"
  "$kvq" compare --task "$task" --preset quick --seeds 1 --run-dir "$dir" --quiet "${resume[@]}"
done
